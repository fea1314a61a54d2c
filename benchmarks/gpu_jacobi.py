"""Issue #3's GPU targets: batched `svd` on 10,000 float32 matrices of 32², 64² and 256² against
`torch.linalg.svd` on the same device, with the device's ceilings measured in the same run.

    python benchmarks/gpu_jacobi.py [--batch 10000] [--sizes 32 64 256] [--budget-s 40] [--json F]

Times are medians of CUDA-event timings after a warm-up. A run whose projection (from probes of 8
to 200 matrices) exceeds --budget-s is not run in full: its time is the last probe's, scaled to
the batch, and marked "projected" (pessimistic where the probe did not fill the device). Jacobi's work is counted from the sweeps the kernel reports
(UNISUB_JACOBI_TRACE): per sweep n(n−1)/2 rotations of 12m + 6n flops (three dot products and the
rotation of two columns of A and of V), in float64. The fewest bytes are A read once and U, S, Vh
written once (float32). Accuracy is checked against float64 CPU references on 16 matrices.
"""
import argparse
import json
import os
import re
import statistics
import sys
import tempfile

import torch

import unisub

PROBE = 200


def event_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def timed(fn, A, budget_s):
    """Seconds for fn on the whole batch A, and whether they are projected rather than measured.
    Probes grow from 8 matrices so that a slow case never runs much past the budget."""
    fn(A[:1])
    torch.cuda.synchronize()
    p = 8
    while True:
        t = event_time(lambda: fn(A[:p]), 1)
        projected = t * A.shape[0] / p
        if projected <= budget_s:
            return event_time(lambda: fn(A), 3 if projected < 5 else 1), False
        if p >= PROBE or t > budget_s / 8:
            return projected, True
        p = min(PROBE, 4 * p)


def ceilings():
    x = torch.empty(2**28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    copy_s = event_time(lambda: y.copy_(x), 10)
    out = {"copy_GBps": 2 * x.numel() * 4 / copy_s / 1e9}
    for dtype, name in ((torch.float64, "fp64_gemm_TFLOPs"), (torch.float32, "fp32_gemm_TFLOPs")):
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        a @ b
        out[name] = 2 * 8192**3 / event_time(lambda: a @ b, 5) / 1e12
    del x, y
    return out


def jacobi_sweeps(A):
    """Most sweeps any matrix of A needed, read from the kernel's trace line on stderr."""
    os.environ["UNISUB_JACOBI_TRACE"] = "1"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 2)
        try:
            unisub.svd(A, -1, "jacobi")
            torch.cuda.synchronize()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            del os.environ["UNISUB_JACOBI_TRACE"]
        log.seek(0)
        found = re.findall(r"at most (\d+) sweeps", log.read())
    return int(found[-1]) if found else None


def accuracy(A, method):
    sample = A[:16]
    U, S, Vh = unisub.svd(sample, -1, method)
    A64 = sample.double().cpu()
    U, S, Vh = U.double().cpu(), S.double().cpu(), Vh.double().cpu()
    ref = torch.linalg.svdvals(A64)
    eye = torch.eye(A.shape[-1], dtype=torch.float64)
    return {
        "reconstruction": ((U * S.unsqueeze(-2) @ Vh - A64).norm() / A64.norm()).item(),
        "orthogonality": (U.mT @ U - eye).abs().max().item(),
        "sv_rel_to_max": ((S - ref).abs() / ref[..., :1]).max().item(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256])
    parser.add_argument("--methods", nargs="+", default=["jacobi", "auto"])
    parser.add_argument("--budget-s", type=float, default=15.0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.cuda.get_device_name()
    ceil = ceilings()
    print(f"device: {device}; torch {torch.__version__}; copy {ceil['copy_GBps']:.0f} GB/s, "
          f"GEMM fp64 {ceil['fp64_gemm_TFLOPs']:.1f} TFLOP/s, fp32 {ceil['fp32_gemm_TFLOPs']:.1f} TFLOP/s", flush=True)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in args.sizes:
        A = torch.randn(args.batch, n, n, generator=gen).cuda()
        base_s, base_proj = timed(lambda X: torch.linalg.svd(X, full_matrices=False), A, args.budget_s)
        for method in args.methods:
            ours_s, ours_proj = timed(lambda X, m=method: unisub.svd(X, -1, m), A, args.budget_s)
            row = {"n": n, "batch": args.batch, "dtype": "float32", "method": method, "ours_s": ours_s,
                   "ours_projected": ours_proj, "torch_s": base_s, "torch_projected": base_proj,
                   "speedup": base_s / ours_s, "accuracy": accuracy(A, method)}
            min_bytes = args.batch * 4 * (2 * n * n + n + n * n)
            row["bandwidth_fraction"] = min_bytes / ours_s / 1e9 / ceil["copy_GBps"]
            if method == "jacobi":
                sweeps = jacobi_sweeps(A[:32])
                row["sweeps"] = sweeps
                if sweeps:
                    flops = args.batch * sweeps * n * (n - 1) / 2 * (12 * n + 6 * n)
                    row["fp64_TFLOPs"] = flops / ours_s / 1e12
                    row["fp64_fraction"] = row["fp64_TFLOPs"] / ceil["fp64_gemm_TFLOPs"]
            rows.append(row)
            mark = lambda p: "~" if p else " "  # noqa: E731
            extra = (f" sweeps {row.get('sweeps')}, {row.get('fp64_TFLOPs', 0):.2f} TFLOP/s fp64 "
                     f"({100 * row.get('fp64_fraction', 0):.1f}% of GEMM)" if method == "jacobi" else "")
            acc = row["accuracy"]
            print(f"{args.batch} x {n} x {n} svd[{method:<6}] ours {mark(ours_proj)}{1e3 * ours_s:10.1f} ms | "
                  f"torch.linalg.svd {mark(base_proj)}{1e3 * base_s:10.1f} ms | {row['speedup']:7.2f}x | "
                  f"bw {100 * row['bandwidth_fraction']:.2f}%{extra} | rec {acc['reconstruction']:.1e} "
                  f"orth {acc['orthogonality']:.1e} sv {acc['sv_rel_to_max']:.1e}", flush=True)
        del A
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "ceilings": ceil, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
