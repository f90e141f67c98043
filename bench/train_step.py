"""`md bench train-step` as a script: same options, same JSON (md.bench.train_step).

python bench/train_step.py --help
"""

from __future__ import annotations

from md.cli.bench import train_step

if __name__ == "__main__":
    train_step(prog_name="bench/train_step.py")
