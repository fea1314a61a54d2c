"""lora_gram against the best plain-PyTorch factored formulation (issue #17 target: >= 1.5x in
float32 and float64), interleaved in one process, best of N (contention on a shared machine only
ever adds time), with the load average printed before and after.

    python benchmarks/lora_gram_speed.py [--reps 5] [--shape M,m,r,n ...] [--dtype float32 float64]

Default shapes: M = 200, r = 16, m = n = 1024 (the issue's) and 500 Mistral-7B v_proj adapters
(B 1024 x 16, A 16 x 4096)."""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import unisub  # noqa: E402
from bench_decompositions import factored_baselines  # noqa: E402


def load():
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--shape", nargs="*", default=["200,1024,16,1024", "500,1024,16,4096"])
    parser.add_argument("--dtype", nargs="*", default=["float32", "float64"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load()}")
    gen = torch.Generator().manual_seed(0)
    for shape in args.shape:
        M, m, r, n = (int(x) for x in shape.split(","))
        for dtype in (getattr(torch, d) for d in args.dtype):
            B = torch.randn(M, m, r, generator=gen, dtype=dtype) / m**0.25
            A = torch.randn(M, r, n, generator=gen, dtype=dtype) / n**0.25
            fns = {"ours": lambda B=B, A=A: unisub.lora_gram(B, A), **factored_baselines(B, A)}
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(args.reps):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t)
            plain = min(v for k, v in best.items() if k != "ours")
            which = min((v, k) for k, v in best.items() if k != "ours")[1]
            print(f"M={M} m={m} r={r} n={n} {str(dtype)[6:]}: ours {best['ours']:.3f} s, best plain "
                  f"{plain:.3f} s ({which}) -> {plain / best['ours']:.2f}x | "
                  + ", ".join(f"{k} {v:.3f}" for k, v in best.items() if k != "ours"), flush=True)
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
