"""Reading speed of the safetensors reader: the Python reader this package had until the reader
moved into libunisub (loaded from git, REV:torch_ops/unisub/io/safetensors.py) against today's
unisub.io (torch.classes.unisub.SafetensorsFile), in the same process, on the same files.

    python3 benchmarks/bench_reader.py [--rev d9bd2fc] [--mb 320] [--files 8] [--repeat 5] [--dir D]

Reports, per path, the best and median wall time of reading every tensor of every file (page
cache warm after the first pass; both paths are timed alternately), and the time to parse the
header of a file with 5000 small tensors.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def old_reader(rev):
    """The pre-libunisub safetensors.py, executed as a module of the installed unisub.io package."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:torch_ops/unisub/io/safetensors.py"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("unisub.io._old_safetensors")
    mod.__package__ = "unisub.io"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{rev}:safetensors.py", "exec"), mod.__dict__)
    return mod


def make_files(folder, total_mb, files):
    from unisub.io import save_file

    g = torch.Generator().manual_seed(0)
    per_file = total_mb * 2**20 // files
    paths = []
    for i in range(files):
        p = folder / f"m{i}.safetensors"
        if not p.exists():
            tensors, left, k = {}, per_file, 0
            while left > 0:  # a mix of shapes, as in a transformer layer stack
                n = min(left // 4, [4096 * 1024, 1024 * 1024, 1024 * 256, 1024][k % 4])
                tensors[f"layers.{k}.weight"] = torch.randn(max(n, 1), generator=g)
                left -= 4 * max(n, 1)
                k += 1
            save_file(tensors, p)
        paths.append(p)
    many = folder / "many.safetensors"
    if not many.exists():
        save_file({f"blocks.{i}.norm.weight": torch.ones(16) for i in range(5000)}, many)
    return paths, many


def read_all(cls, paths):
    n = 0
    for p in paths:
        f = cls(p)
        for k in f.keys():
            n += f.get(k).numel()
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="d9bd2fc", help="git revision of the old Python reader")
    ap.add_argument("--mb", type=int, default=320)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir")
    args = ap.parse_args()
    import unisub.io as new

    old = old_reader(args.rev)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths, many = make_files(folder, args.mb, args.files)
        total = sum(p.stat().st_size for p in paths)
        assert read_all(old.SafetensorsFile, paths) == read_all(new.SafetensorsFile, paths)  # warm the cache
        for p in paths[:2]:
            a, b = old.SafetensorsFile(p), new.SafetensorsFile(p)
            assert all(torch.equal(a.get(k), b.get(k)) for k in a.keys())
        times = {"old (Python, mmap + copy)": [], "new (libunisub, pread)": []}
        for _ in range(args.repeat):
            for name, cls in zip(times, (old.SafetensorsFile, new.SafetensorsFile)):
                t0 = time.perf_counter()
                read_all(cls, paths)
                times[name].append(time.perf_counter() - t0)
        print(f"reading {len(paths)} files, {total / 2**20:.0f} MiB, every tensor, {args.repeat} passes each:")
        for name, ts in times.items():
            print(f"  {name:28s} best {min(ts):.3f} s ({total / 2**30 / min(ts):.2f} GiB/s), "
                  f"median {statistics.median(ts):.3f} s")
        for name, fn in (("old", old.read_header), ("new", new.read_header)):
            ts = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn(many)
                ts.append(time.perf_counter() - t0)
            print(f"  header of 5000 tensors, {name}: best {1e3 * min(ts):.1f} ms, median {1e3 * statistics.median(ts):.1f} ms")


if __name__ == "__main__":
    main()
