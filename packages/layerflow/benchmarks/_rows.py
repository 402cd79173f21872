"""The one row writer shared by this package's benchmark scripts (see ``benchmarks/run_all.py``).

Scripts import it as a sibling module (the script's folder is on ``sys.path`` when run as a file).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

Emit = Callable[..., None]


def emitter(benchmark: str) -> Emit:
    """``emit(sink, measure, value, unit, target="")``: print one figure and append it to ``sink``."""

    def emit(sink: Path | None, measure: str, value: float, unit: str, target: str = "") -> None:
        row: dict[str, object] = {"benchmark": benchmark, "measure": measure, "value": value, "unit": unit}
        if target:
            row["target"] = target
        shown = f"{value:>12,.0f}" if unit == "tokens" else f"{value:>12.4g}"
        print(f"  {measure:<62} {shown} {unit} {target}")
        if sink is not None:
            with sink.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    return emit


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark script takes: ``--quick`` (smaller sizes) and ``--json PATH`` (rows)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    parser.add_argument("--json", type=Path, default=None, help="append one JSON row per figure here")
    return parser
