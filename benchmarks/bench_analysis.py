"""The analysis job against the obvious plain-PyTorch script (load every checkpoint, stack each
slot, centre, ``torch.linalg.svd`` of each mode unfolding), on synthetic checkpoints on disk.

    python3 benchmarks/run.py analysis            # harness timing (ms per whole analysis)
    python3 benchmarks/bench_analysis.py throughput [--models 32 --layers 4 --width 256]
    python3 benchmarks/bench_analysis.py memory --models 200 --layers 12 --width 768 --dir D

``throughput`` prints checkpoints/s and GB/s read for both; ``memory`` streams the checkpoints in
a fresh process and reports its peak resident memory against the size of one checkpoint.
Ours does more than the baseline: split-half fits (two more eigendecompositions per mode) and the
null spectra; the baseline holds every checkpoint in memory at once.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def make_checkpoints(folder, models, layers, width, dtype=torch.float16, seed=0, slots=("q", "k", "v", "o")):
    """A shared random 'pretrained' model plus a low-rank-plus-noise fine-tune per checkpoint."""
    from unisub.io import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    base = {f"layers.{l}.attn.{s}.weight": torch.randn(width, width, generator=g) / width ** 0.5
            for l in range(layers) for s in slots}
    shared = {k: torch.linalg.qr(torch.randn(width, 8, generator=g)).Q for k in base}
    for i in range(models):
        path = folder / f"ckpt{i:04d}.safetensors"
        if path.exists():
            continue
        sd = {k: (v + shared[k] @ torch.randn(8, width, generator=g) * 0.02
                  + torch.randn(width, width, generator=g) * 1e-3).to(dtype) for k, v in base.items()}
        save_file(sd, path)
    return folder


def plain_torch(folder, modes=("out", "in"), energy=0.9):
    """The obvious script: everything in memory, one SVD per slot and mode."""
    from unisub.io import load_file

    sds = [load_file(p) for p in sorted(Path(folder).glob("*.safetensors"))]
    out = {}
    for key in sds[0]:
        W = torch.stack([sd[key].double() for sd in sds])
        D = W - W.mean(0)
        for mode in modes:
            X = torch.cat(list(D), 1) if mode == "out" else torch.cat([d.T for d in D], 1)
            U, S, _ = torch.linalg.svd(X, full_matrices=False)
            cum = S.pow(2).cumsum(0) / S.pow(2).sum()
            r = int((cum >= energy).nonzero()[0]) + 1
            out[key, mode] = (U[:, :r], S)
    return out


def ours(folder, modes=("out", "in"), energy=0.9, profile=False):
    import unisub

    return unisub.analyze(folder, modes=modes, energy=energy, plots=False, progress=False, profile=profile)


def folder_bytes(folder):
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


SIZES = {"quick": (24, 2, 256), "full": (64, 4, 512)}
_cache = {}


def cases(device, size="quick", dtypes=(torch.float32,)):
    from harness import Case

    models, layers, width = SIZES[size]
    if size not in _cache:
        _cache[size] = make_checkpoints(Path(tempfile.mkdtemp(prefix="unisub-bench-")), models, layers, width)
    folder = _cache[size]
    yield Case(op="analyze", shape=f"{models} ckpts x {layers * 4} slots {width}x{width} f16",
               dtype=torch.float16, device="cpu", ours=lambda: ours(folder),
               baselines={"stack + linalg.svd": lambda: plain_torch(folder)})


def throughput(args):
    folder = make_checkpoints(Path(args.dir or tempfile.mkdtemp(prefix="unisub-bench-")), args.models, args.layers, args.width)
    gb = folder_bytes(folder) / 1e9
    print(f"{args.models} checkpoints, {args.layers * 4} slots of {args.width}x{args.width} float16, {gb:.3f} GB; "
          f"{torch.get_num_threads()} threads")
    for name, fn in (("unisub.analyze", ours), ("stack + linalg.svd", plain_torch)):
        fn(folder) if args.warmup else None
        t = time.perf_counter()
        fn(folder)
        dt = time.perf_counter() - t
        print(f"{name:<20} {dt:8.2f} s  {args.models / dt:8.2f} checkpoints/s  {gb / dt:7.3f} GB/s")
    # where our time goes, by stage, and the Grams against the GEMM rate measured now
    from unisub.analysis import format_profile

    print(format_profile(ours(folder, profile=True).report))


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024


def memory_child(folder, modes, batch_size):
    import unisub

    base = _status_mb("VmRSS")
    t = time.perf_counter()
    # With an output folder each slot's subspace goes to disk when done; without one, all
    # subspaces are returned in memory (48 slots x ~9 MiB here), which is not streaming.
    with tempfile.TemporaryDirectory() as out:
        unisub.analyze(folder, modes=modes, energy=0.9, plots=False, progress=True, batch_size=batch_size, out=out)
    dt = time.perf_counter() - t
    # VmHWM, not ru_maxrss: Linux carries the parent's resident high-water mark into a child's
    # ru_maxrss at exec, so a parent that had just generated the checkpoints (or held anything
    # large) inflated the child's "peak" (seen: 397 MiB instead of ~125 MiB).
    peak = _status_mb("VmHWM")
    print(f"RESULT rss_after_import_mb={base:.1f} peak_rss_mb={peak:.1f} seconds={dt:.1f}")


def memory(args):
    folder = make_checkpoints(Path(args.dir), args.models, args.layers, args.width)
    ck = next(Path(folder).glob("*.safetensors")).stat().st_size / 2**20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "torch_ops"), os.environ.get("PYTHONPATH", "")]))
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_analysis as b; "
            f"b.memory_child({str(folder)!r}, {tuple(args.modes)!r}, {args.batch_size})")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    if out.returncode or not line:
        raise SystemExit(out.stderr[-3000:])
    vals = dict(kv.split("=") for kv in line[0].split()[1:])
    base, peak = float(vals["rss_after_import_mb"]), float(vals["peak_rss_mb"])
    m = args.width
    acc = 3 * 2 * len(args.modes) * m * m * 8 / 2**20  # two halves + the merged total: mean and Gram per mode
    print(f"{args.models} checkpoints of {ck:.1f} MiB ({args.layers} layers, width {m}); modes {args.modes}; "
          f"batch {args.batch_size}; {vals['seconds']} s")
    print(f"peak RSS {peak:.1f} MiB, of which {peak - base:.1f} MiB above the process after `import unisub` "
          f"({base:.1f} MiB); bound: 3 checkpoints + accumulators = {3 * ck + acc:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["throughput", "memory"])
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--modes", nargs="+", default=["out", "in"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dir")
    ap.add_argument("--warmup", action="store_true")
    args = ap.parse_args()
    throughput(args) if args.what == "throughput" else memory(args)


if __name__ == "__main__":
    main()
