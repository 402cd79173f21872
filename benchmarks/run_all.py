"""Run every package benchmark and print one table of the figures they measured side by side.

Convention (each ``packages/<name>/benchmarks/bench_*.py``): a script that takes ``--json PATH`` and
``--quick``, measures its cases side by side in one process, prints its own detail, and appends one
JSON object per figure to PATH::

    {"benchmark": "multi-lora", "measure": "motion gated off / base Linear", "value": 1.01,
     "unit": "x", "target": "<= 1.02"}

``unit`` is free text ("x" for ratios, "ms", "MiB", "TFLOP/s"); ``target`` is optional. Scripts never
import each other; this runner only collects what they wrote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def discover(only: list[str]) -> list[Path]:
    scripts = sorted(ROOT.glob("packages/*/benchmarks/bench_*.py")) + sorted(
        ROOT.glob("benchmarks/bench_*.py")
    )
    if only:
        scripts = [s for s in scripts if any(word in str(s) for word in only)]
    return scripts


def format_value(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.3f}"
    return f"{value:.3e}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    parser.add_argument("--only", nargs="*", default=[], help="substrings of benchmark paths to run")
    parser.add_argument("--out", type=Path, default=None, help="also write the collected rows here (JSON)")
    args = parser.parse_args()

    scripts = discover(args.only)
    if not scripts:
        print("no benchmark scripts found", file=sys.stderr)
        return 1
    rows: list[dict] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for script in scripts:
            sink = Path(tmp) / f"{script.parent.parent.name}-{script.stem}.jsonl"
            command = [sys.executable, str(script), "--json", str(sink)] + (["--quick"] if args.quick else [])
            print(f"\n=== {script.relative_to(ROOT)}", flush=True)
            start = time.perf_counter()
            result = subprocess.run(command, cwd=ROOT)
            print(
                f"--- {script.name}: exit {result.returncode} after {time.perf_counter() - start:.1f}s",
                flush=True,
            )
            if result.returncode != 0:
                failed.append(str(script.relative_to(ROOT)))
            if sink.exists():
                rows += [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]

    width = max([len(r["benchmark"]) for r in rows] + [9])
    measure_width = max([len(r["measure"]) for r in rows] + [7])
    print("\n" + "=" * 100)
    print(f"{'benchmark':<{width}}  {'measure':<{measure_width}}  {'value':>12}  unit      target")
    for row in rows:
        print(
            f"{row['benchmark']:<{width}}  {row['measure']:<{measure_width}}  {format_value(float(row['value'])):>12}"
            f"  {row.get('unit', ''):<8}  {row.get('target', '')}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    if failed:
        print(f"\nfailed benchmark scripts: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
