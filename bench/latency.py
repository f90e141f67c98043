"""`md bench latency` as a script: same options, same JSON (md.bench.latency).

python bench/latency.py --help
"""

from __future__ import annotations

from md.cli.bench import latency

if __name__ == "__main__":
    latency(prog_name="bench/latency.py")
