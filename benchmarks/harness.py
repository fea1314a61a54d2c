"""Same-process timing of unisub ops against their plain-PyTorch equivalents.

Each case runs our op and one or more baselines on the same inputs, with torch.utils.benchmark
(warm-up, CUDA synchronisation, adaptive repeat count), and reports medians and ratios.
"""
import json
import platform
from dataclasses import dataclass, field
from typing import Callable, Dict

import torch
import torch.utils.benchmark as tb


@dataclass
class Case:
    op: str
    shape: str
    dtype: torch.dtype
    device: str
    ours: Callable[[], object]
    baselines: Dict[str, Callable[[], object]] = field(default_factory=dict)


def _median_seconds(fn, min_run_time: float) -> float:
    # torch.utils.benchmark.Timer runs on ONE thread unless told otherwise: give it the process's
    # thread count, which device_name() reports and both sides are meant to use.
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def time_once(fn, device: str) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after (for interleaved
    best-of-N timing on a noisy machine, where contention only ever adds time)."""
    import time

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run(cases, min_run_time: float = 0.5):
    rows = []
    for case in cases:
        row = {"op": case.op, "shape": case.shape, "dtype": str(case.dtype).replace("torch.", ""),
               "device": case.device, "ours_ms": 1e3 * _median_seconds(case.ours, min_run_time),
               "baselines": {}}
        for name, fn in case.baselines.items():
            t = 1e3 * _median_seconds(fn, min_run_time)
            row["baselines"][name] = {"ms": t, "speedup": t / row["ours_ms"]}
        rows.append(row)
        print_row(row)
    return rows


def print_row(row):
    base = "  ".join(f"{n}: {b['ms']:.2f} ms ({b['speedup']:.2f}x)" for n, b in row["baselines"].items())
    print(f"{row['op']:<14} {row['shape']:<26} {row['dtype']:<8} {row['device']:<5} "
          f"ours {row['ours_ms']:9.2f} ms | {base}", flush=True)


def write_json(rows, path, device: str):
    meta = {"torch": torch.__version__, "device": device_name(device),
            "note": "speedup = baseline time / ours (higher is better for unisub)"}
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
