"""Speed and memory of the engine against full attention and transformers: the same run as
`infini bench` (this script only forwards its arguments to that command).

    python benchmarks/bench_engine.py --quick          # == infini bench --quick, under a minute
    python benchmarks/bench_engine.py                  # the full run (roughly half an hour on two idle cores)

Results: printed; written only with --out FILE (and FILE.md).
The measuring code lives in benchmarks/engine_bench.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infini_cli.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="bench_engine.py")
