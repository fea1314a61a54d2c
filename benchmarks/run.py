"""Run unisub's benchmarks: python benchmarks/run.py [--device cuda] [--size full] [--json F] [FAMILY ...]"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402

# Every benchmarks/bench_<family>.py is a family; it defines cases(device, size, dtypes).
FAMILIES = {p.stem[len("bench_"):]: p.stem for p in sorted(Path(__file__).parent.glob("bench_*.py"))}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("families", nargs="*", help=f"any of {sorted(FAMILIES)} (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="quick", choices=["quick", "full"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "both"])
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown benchmark families {sorted(unknown)}; choose from {sorted(FAMILIES)}")
    args.families = args.families or list(FAMILIES)
    dtypes = {"float32": (torch.float32,), "float64": (torch.float64,),
              "both": (torch.float32, torch.float64)}[args.dtype]
    print(f"device: {harness.device_name(args.device)}; torch {torch.__version__}")
    rows = []
    for family in args.families:
        module = __import__(FAMILIES[family])
        rows += harness.run(module.cases(args.device, args.size, dtypes), args.min_run_time)
    if args.json:
        harness.write_json(rows, args.json, args.device)


if __name__ == "__main__":
    main()
