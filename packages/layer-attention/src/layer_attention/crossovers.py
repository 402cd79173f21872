"""Measured crossovers: where another backend beats SDPA, per device, so ``"auto"`` never loses to it.

SDPA is the stock path (diffusers' CogVideoX processor calls it), so it is ``"auto"``'s baseline.
Another backend is picked only where this table says it was *measured* faster on the same device
(by name, else by compute capability) for the same dtype, at a nearby sequence length and layout
density. The table is data, ``crossovers.json`` in this package, written by the layer-attention
benchmark (``bench_attention.py --write-crossovers``) and seeded with the H200 figures of issue 13.
``LAYER_ATTENTION_CROSSOVERS=/path/table.json`` adds or replaces device entries at import.

A point holds TFLOP/s per backend, forward and backward, counted on allowed pairs, so throughputs
of two backends at one point compare directly. Between measured densities the log speed ratio is
interpolated linearly; beyond them it is held at the nearest point, and points more than
:data:`MAX_LENGTH_RATIO` away in N do not count.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

#: The stock path every other backend is compared with.
BASELINE = "sdpa"
#: Environment variable naming an extra table (entries replace packaged ones of the same device).
TABLE_ENV = "LAYER_ATTENTION_CROSSOVERS"
#: A backend must be measured at least this much faster than the baseline to be picked.
MIN_SPEEDUP = 1.05
#: Measurements at N more than this factor away from the call's N are not used.
MAX_LENGTH_RATIO = 4.0
#: Backward FLOPs / forward FLOPs (2 matmuls forward, 5 backward).
BACKWARD_FLOP_RATIO = 2.5
FORMAT = 1


@dataclass(frozen=True)
class Point:
    """Throughput of each backend at one (dtype, head dim, N, density) on one device."""

    dtype: str
    head_dim: int
    seq_len: int
    density: float
    tflops: Mapping[str, Mapping[str, float]]  # backend -> {"fwd": ..., "bwd": ...}
    label: str = ""

    def time(self, backend: str, mode: str) -> float | None:
        """Seconds per TFLOP of forward work (backward included for ``"fwd+bwd"``), None if unmeasured."""
        rates = self.tflops.get(backend)
        if not rates or "fwd" not in rates:
            return None
        seconds = 1.0 / rates["fwd"]
        if mode == "fwd":
            return seconds
        if "bwd" not in rates:
            return None
        return seconds + BACKWARD_FLOP_RATIO / rates["bwd"]

    def speedup(self, backend: str, mode: str) -> float | None:
        """Baseline time / ``backend`` time at this point (> 1: ``backend`` is faster)."""
        mine, base = self.time(backend, mode), self.time(BASELINE, mode)
        return None if mine is None or base is None else base / mine

    def describe(self) -> str:
        name = f"{self.label}, " if self.label else ""
        return f"{name}density {self.density:.2f}, N={self.seq_len}, {self.dtype}, D={self.head_dim}"


@dataclass(frozen=True)
class DeviceEntry:
    """Every measured point of one device."""

    name: str
    capability: tuple[int, int] | None
    points: tuple[Point, ...]
    source: str = ""


@dataclass(frozen=True)
class Estimate:
    """Expected baseline time / backend time, and the measurements it rests on."""

    speedup: float
    basis: str


@dataclass(frozen=True)
class CrossoverTable:
    """Device entries by name; see the module docstring for how a call is matched."""

    devices: Mapping[str, DeviceEntry] = field(default_factory=dict)

    # ------------------------------------------------------------------ matching
    def entry_for(self, name: str, capability: tuple[int, int] | None) -> tuple[DeviceEntry, str] | None:
        """The entry for a device and how it matched (``"measured on this device"`` or by capability)."""
        if name in self.devices:
            return self.devices[name], f"measured on {name}"
        if capability is not None:
            for entry in self.devices.values():
                if entry.capability == capability:
                    return (
                        entry,
                        f"measured on {entry.name} (same compute capability {capability[0]}.{capability[1]})",
                    )
        return None

    def estimate(
        self,
        backend: str,
        *,
        device_name: str,
        capability: tuple[int, int] | None,
        dtype: torch.dtype,
        head_dim: int,
        seq_len: int,
        density: float,
        mode: str,
    ) -> Estimate | str:
        """Expected speedup of ``backend`` over the baseline, or why there is no estimate."""
        match = self.entry_for(device_name, capability)
        if match is None:
            return f"no measurements for {device_name}"
        entry, how = match
        dtype_name = str(dtype).removeprefix("torch.")
        points = [p for p in entry.points if p.dtype == dtype_name and p.speedup(backend, mode) is not None]
        if not points:
            return f"no {mode} measurements of {backend} vs {BASELINE} in {dtype_name} ({how})"
        same_dim = [p for p in points if p.head_dim == head_dim]
        points = same_dim or points
        distance = [abs(math.log(p.seq_len / seq_len)) for p in points]
        nearest = min(distance)
        if nearest > math.log(MAX_LENGTH_RATIO):
            lengths = sorted({p.seq_len for p in points})
            return f"measured only at N={lengths} ({how}), more than {MAX_LENGTH_RATIO:g}x from N={seq_len}"
        row = sorted((p for p, d in zip(points, distance) if d == nearest), key=lambda p: p.density)
        below = [p for p in row if p.density <= density]
        above = [p for p in row if p.density >= density]
        low = below[-1] if below else row[0]
        high = above[0] if above else row[-1]
        low_speed, high_speed = low.speedup(backend, mode), high.speedup(backend, mode)
        assert low_speed is not None and high_speed is not None
        if low is high or high.density == low.density:
            return Estimate(low_speed, f"{low_speed:.2f}x {BASELINE} {mode} at {low.describe()} ({how})")
        weight = (density - low.density) / (high.density - low.density)
        weight = min(max(weight, 0.0), 1.0)
        speed = math.exp((1 - weight) * math.log(low_speed) + weight * math.log(high_speed))
        return Estimate(
            speed,
            f"{speed:.2f}x {BASELINE} {mode} interpolated between {low_speed:.2f}x at {low.describe()} "
            f"and {high_speed:.2f}x at {high.describe()} ({how})",
        )

    # ------------------------------------------------------------------ (de)serialisation
    def with_entry(self, entry: DeviceEntry) -> CrossoverTable:
        """A copy where ``entry`` replaces the entry of the same device name."""
        return CrossoverTable({**self.devices, entry.name: entry})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "devices": [
                {
                    "name": e.name,
                    "capability": list(e.capability) if e.capability else None,
                    "source": e.source,
                    "points": [
                        {
                            "label": p.label,
                            "dtype": p.dtype,
                            "head_dim": p.head_dim,
                            "seq_len": p.seq_len,
                            "density": round(p.density, 6),
                            "tflops": {b: dict(r) for b, r in p.tflops.items()},
                        }
                        for p in e.points
                    ],
                }
                for e in self.devices.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "table") -> CrossoverTable:
        if data.get("format") != FORMAT:
            raise ValueError(f"{origin}: crossover table format {data.get('format')!r}, expected {FORMAT}")
        devices: dict[str, DeviceEntry] = {}
        for index, raw in enumerate(data.get("devices", [])):
            try:
                capability = raw.get("capability")
                points = tuple(
                    Point(
                        dtype=str(p["dtype"]),
                        head_dim=int(p["head_dim"]),
                        seq_len=int(p["seq_len"]),
                        density=float(p["density"]),
                        tflops={b: {m: float(v) for m, v in r.items()} for b, r in p["tflops"].items()},
                        label=str(p.get("label", "")),
                    )
                    for p in raw["points"]
                )
                entry = DeviceEntry(
                    name=str(raw["name"]),
                    capability=None if capability is None else (int(capability[0]), int(capability[1])),
                    points=points,
                    source=str(raw.get("source", "")),
                )
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise ValueError(f"{origin}: device entry {index} is malformed ({error!r})") from error
            devices[entry.name] = entry
        return cls(devices)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> CrossoverTable:
        return cls.from_dict(json.loads(Path(path).read_text()), origin=str(path))

    def write(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def measured_entry(
    name: str, capability: tuple[int, int] | None, points: Sequence[Point], source: str
) -> DeviceEntry:
    """A device entry from freshly measured points (what the benchmark writes)."""
    return DeviceEntry(name=name, capability=capability, points=tuple(points), source=source)


@functools.cache
def packaged_table() -> CrossoverTable:
    """``crossovers.json`` of this package, plus the entries of ``$LAYER_ATTENTION_CROSSOVERS``."""
    text = resources.files("layer_attention").joinpath("crossovers.json").read_text()
    table = CrossoverTable.from_dict(json.loads(text), origin="layer_attention/crossovers.json")
    extra = os.environ.get(TABLE_ENV)
    if extra:
        for entry in CrossoverTable.read(extra).devices.values():
            table = table.with_entry(entry)
    return table
