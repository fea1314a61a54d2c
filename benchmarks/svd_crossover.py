"""The crossover `svd(method="auto")` uses on CPU for float32 input, measured on this machine:
the fused per-matrix Gram-route kernel against LAPACK (torch.linalg.svd) for square and tall
batches around the threshold. Each configuration runs in a fresh process with
UNISUB_CPU_FUSED_SVD_MAX_DIM forcing the fused kernel, so both sides are measured at every size.

    python benchmarks/svd_crossover.py [--dims 96 128 160 192 256 384] [--batches 1 16 128]
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch, unisub
b, m, n = map(int, sys.argv[1:4])
A = torch.randn(b, m, n, generator=torch.Generator().manual_seed(0))
def best(f, k=3):
    f(); t = 1e9
    for _ in range(k):
        s = time.perf_counter(); f(); t = min(t, time.perf_counter() - s)
    return t
print(json.dumps({"fused": best(lambda: unisub.svd(A, -1, "gram")),
                  "lapack": best(lambda: torch.linalg.svd(A, full_matrices=False))}))
"""


def measure(b, m, n):
    env = dict(os.environ, UNISUB_CPU_FUSED_SVD_MAX_DIM=str(1 << 30))
    out = subprocess.run([sys.executable, "-c", CHILD, str(b), str(m), str(n)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[96, 128, 160, 192, 256, 384])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--max-bytes", type=float, default=4e8, help="skip batches larger than this (float32 bytes)")
    args = p.parse_args()
    import torch

    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, float32; "
          "time of the fused kernel / torch.linalg.svd (< 1: the fused kernel is faster)")
    print(f"{'min(m,n)':>8} " + " ".join(f"{f'b={b} {s}':>16}" for b in args.batches for s in ("square", "tall 4:1")))
    for n in args.dims:
        cells = []
        for b in args.batches:
            for tall in (1, 4):
                if b * tall * n * n * 4 > args.max_bytes:
                    cells.append(f"{'-':>16}")
                    continue
                r = measure(b, tall * n, n)
                cells.append(f"{r['fused'] / r['lapack']:>16.2f}")
        print(f"{n:>8} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
