"""mode_svd(method="auto") on the issue-#15 cases, interleaved best-of-N in one process:
- a LoRA-like 500 x 16 x 4096 stack whose spectrum falls away after rank 32 (auto keeps its
  certified sketch) and a Gaussian one (a noise floor: auto falls back to the Gram route);
- against the full SVD of the unfolding (the issue's >= 10x yardstick), the Gram route and the
  uncertified `randomized` sketch; plus the accuracy of each route's kept values against the
  float64 SVD.

python benchmarks/mode_svd_auto.py [--size quick|full] [--repeats 3] [--spectra decaying 'noise floor']"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unisub  # noqa: E402
from bench_decompositions import lora_like_stack  # noqa: E402
from harness import device_name, time_once  # noqa: E402

SIZES = {"quick": (100, 16, 1024, 16), "full": (500, 16, 4096, 32)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="full", choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spectra", nargs="+", default=["decaying", "noise floor"], choices=["decaying", "noise floor"])
    args = parser.parse_args()
    M, r, n, k = SIZES[args.size]
    gen = torch.Generator().manual_seed(0)
    print(f"device: {device_name('cpu')}; torch {torch.__version__}; X {M} x {r} x {n} float32, dim 2, rank {k}, centred")
    stacks = {"decaying": lambda: lora_like_stack(M, r, n, gen, torch.float32),
              "noise floor": lambda: torch.randn(M, r, n, generator=gen)}
    for spectrum in args.spectra:
        X = stacks[spectrum]()
        unfolded = (X.double() - X.double().mean(0)).movedim(2, 0).reshape(n, -1)
        S_ref = torch.linalg.svdvals(unfolded)[:k]
        routes = {m: (lambda m=m: unisub.mode_svd(X, 2, rank=k, center=True, method=m)) for m in ("auto", "gram", "randomized")}
        routes["svd of unfolding"] = lambda: torch.linalg.svd((X - X.mean(0)).movedim(2, 0).reshape(n, -1), full_matrices=False)
        best = {name: float("inf") for name in routes}
        for rep in range(args.repeats):
            for name, fn in routes.items():
                if name == "svd of unfolding" and rep > 0:
                    continue  # minutes per call on 2 cores: once is enough for a >= 10x yardstick
                best[name] = min(best[name], time_once(fn, "cpu"))
        print(f"\n{spectrum}:")
        for name in ("auto", "gram", "randomized"):
            S = routes[name]()[1].double()
            err = float(((S - S_ref) / S_ref).abs().max())
            print(f"  {name:<11} {best[name]:8.3f} s   svd/ours {best['svd of unfolding'] / best[name]:7.1f}x   "
                  f"gram/ours {best['gram'] / best[name]:5.2f}x   max rel. error of kept sigma {err:.1e}")
        print(f"  svd of unfolding {best['svd of unfolding']:8.3f} s (float32 LAPACK, one call)")


if __name__ == "__main__":
    main()
