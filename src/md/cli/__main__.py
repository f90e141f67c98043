"""`python -m md.cli ...` (used under torchrun)."""

from md.cli import main

main()
