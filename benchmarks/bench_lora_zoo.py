"""Issue #17's LoRA-zoo benchmark: the analysis job (`unisub-analyze` and `unisub analyze`) against
the plain-PyTorch script on a zoo of PEFT adapters of Mistral-7B's shape, on disk.

    python benchmarks/bench_lora_zoo.py                       # 500 adapters x 4 layers (many minutes)
    python benchmarks/bench_lora_zoo.py --models 24 --layers 1 --repeat 2 --json out.json   # quick
    python benchmarks/bench_lora_zoo.py [--rank 16] [--dir D] [--cases delta factors] [--threads 1]
                                        [--gram-reps 3] [--gemm-size 2048] [--gram-precision P]

The zoo (`make_zoo`, cached in --dir, default /tmp/unisub-lora-zoo-<models>-<layers>-r<rank>):
rank-16 float16 PEFT adapters (`adapter_model.safetensors` + `adapter_config.json`, lora_alpha 32,
so s = 2) on q_proj (A 16 x 4096, B 4096 x 16) and v_proj (A 16 x 4096, B 1024 x 16) of the first
--layers layers; every module's factors mix a few directions shared by the zoo with per-adapter
noise, at a per-adapter strength (log-normal), B not zero.

Cases, each run as fresh processes on the same zoo, interleaved (C++ tool, plain, Python CLI; then
again --repeat times; the best time of each is reported, as contention only ever adds time, and
the highest peak):
- `delta`: the M x M model-space Gram of dW_i = s_i B_i A_i per module and its centred eigh.
  Ours: `--modes delta` (`lora_gram`). Plain: every adapter loaded with `safetensors.torch`, per
  module the factors concatenated in float64 with s folded into B, P = Bc^T Bc and Q = Ac Ac^T
  ((Mr)^2 each), K = sum of P o Q over its r x r blocks, H K H, `torch.linalg.eigh`.
- `factors`: every lora_A / lora_B stack as an ordinary slot, modes out and in. Ours:
  `--modes out in`. Plain: per tensor the [M, a, b] stack in float64 (B scaled by s, as ours
  scales it), centred over models, each unfolding's Gram X X^T, `torch.linalg.eigh`.
Ours does more than the plain script (split-half fits: two more eighs per mode, the nulls, the
report, subspace files); the plain script holds the whole zoo in memory.

What counts:
- Time: wall clock of the whole fresh process (interpreter, imports, reading, everything), and
  ours' per-stage seconds from `--profile` (report.json's "profile").
- Peak memory: the peak resident set of the process (see `measured_run` for how it is read), also
  shown above the same program's idle peak (the C++ tool's `--check-headers` of one adapter file,
  `python -m unisub --version`, `python -c "import torch, safetensors.torch"`). The bound "one
  slot's factors plus accumulators" (set against ours' peak above idle): delta, the largest
  module's factors of all M adapters as stored (float16) plus K (8 M^2 bytes); the same with the
  factors in float64 (what lora_gram works in) is printed beside it. factors: the largest slot's
  stack as stored plus three accumulators (two split halves and their merged total: a float64
  mean and one float64 Gram per mode). The plan's own estimate (report.json's plan.peak_bytes)
  is printed as well.
- Gram alone: in this process, on the factors already stacked (layer 0's data; every module of a
  kind has the same shapes, so the time is multiplied by the number of such modules): per delta
  module `torch.ops.unisub.lora_gram(B, A)` in float64 and float32; per factor slot and mode
  `torch.ops.unisub.mode_gram(X, dim, center=True)` and `gram_update_(G, X_centred, dim)` (the op
  the analysis accumulates with) in float64, and the plain GEMM X X^T of the centred unfolding in
  float64 and float32; best of --gram-reps. Rates are against the GEMM rate of the row's dtype
  measured here (an n x n x n `torch.mm`, n = --gemm-size, best of 3). Multiply-adds counted are
  the unavoidable ones, a triangle of each symmetric Gram: (Mr)^2 (m + n)/2 per delta module (P
  and Q, halved), d(d + 1)/2 * M * other per mode Gram; so a full GEMM X X^T reaches at most ~50%
  by this count. total/Gram = ours' wall time over the sum, over its slots, of the Gram alone on
  the route its report names (`"gram"`, see `--gram-precision` in docs/analysis.md): float64 ->
  lora_gram / gram_update_ in float64; float32 GEMMs -> lora_gram on float32 factors (delta), the
  plain float32 X X^T (a mode: no op of ours runs a mode Gram on float32 GEMMs by itself).
- Read time: `cat` of every file of the zoo to /dev/null, warm page cache (after a first read).
- Agreement: ours' eigenvalues (report.json: singular_values^2 per slot and mode; both front ends)
  against the plain script's (float64 throughout): every |dl| must be <= 1e-9 l_max (two float64
  Gram routes round at ~d eps l_max) plus, where ours' report says it took float32 GEMMs, the
  error it states (relative_error_bound / estimated_relative_error) times the trace; max |dl|/l_max
  and the max relative difference over eigenvalues above 1e-6 l_max are printed too.

Targets (issue #17): plain/ours >= 3, ours' peak above idle <= the bound, total <= 1.3 x Gram alone.
Threads: --threads (default 1, as docs/analysis.md's measurements) for every process, through
OMP_NUM_THREADS / MKL_NUM_THREADS and torch.set_num_threads here.
"""
import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "base_model.model."
# module -> (out m, in n) for Mistral-7B: q_proj 4096 x 4096, v_proj 1024 x 4096 (grouped-query KV)
MODULES = {"q_proj": (4096, 4096), "v_proj": (1024, 4096)}
LORA_ALPHA = 32
EIG_TOL = 1e-9
TARGET_SPEEDUP, TARGET_GRAM_RATIO = 3.0, 1.3
MiB = 2 ** 20


# ----------------------------------------------------------------------------------------------
# the zoo

def module_key(layer, proj):
    return f"{PREFIX}model.layers.{layer}.self_attn.{proj}"


def adapter_config(rank):
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "mistralai/Mistral-7B-v0.1",
            "r": rank, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "rank_pattern": {},
            "alpha_pattern": {}, "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
            "layers_to_transform": None, "revision": None}


def make_zoo(folder, models=500, layers=4, rank=16, seed=0, shared=4, dtype=torch.float16):
    """``folder/adapter_{i:04d}/`` PEFT LoRA adapters (safetensors + config) of Mistral-7B's q_proj
    and v_proj in the first ``layers`` layers. Per module the zoo has ``shared`` directions on each
    side (orthonormal, drawn once); adapter i's A rows and B columns are random mixes of them plus
    isotropic noise, at a per-adapter strength. Adapters already on disk are kept (each is drawn
    from its own generator, so the zoo does not depend on which were cached)."""
    from unisub.io import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    directions = {}
    for layer in range(layers):
        for proj, (m, n) in MODULES.items():
            ua = torch.linalg.qr(torch.randn(n, shared, generator=g, dtype=torch.float64)).Q.T.contiguous()  # [k, n]
            ub = torch.linalg.qr(torch.randn(m, shared, generator=g, dtype=torch.float64)).Q  # [m, k]
            directions[layer, proj] = (ua, ub)
    config = json.dumps(adapter_config(rank), indent=2) + "\n"
    made = 0
    for i in range(models):
        d = folder / f"adapter_{i:04d}"
        st, cf = d / "adapter_model.safetensors", d / "adapter_config.json"
        if st.exists() and cf.exists():
            if cf.read_text() != config:
                raise SystemExit(f"{cf} is not this zoo's config (another rank?): use another --dir")
            continue
        d.mkdir(exist_ok=True)
        gi = torch.Generator().manual_seed(seed * 1_000_003 + i + 1)
        strength = math.exp(0.4 * float(torch.randn((), generator=gi)))
        tensors = {}
        for (layer, proj), (ua, ub) in directions.items():
            m, n = MODULES[proj]
            # A rows: shared part and noise of norm ~1 each (entries ~0.02, as kaiming-initialised
            # A); B columns: shared part of norm ~1.6, noise ~1, times 0.05 (entries ~1e-3)
            A = 0.5 * torch.randn(rank, shared, generator=gi, dtype=torch.float64) @ ua \
                + torch.randn(rank, n, generator=gi, dtype=torch.float64) / n ** 0.5
            B = 0.05 * strength * (0.8 * ub @ torch.randn(shared, rank, generator=gi, dtype=torch.float64)
                                   + torch.randn(m, rank, generator=gi, dtype=torch.float64) / m ** 0.5)
            key = module_key(layer, proj)
            tensors[f"{key}.lora_A.weight"] = A.to(dtype)
            tensors[f"{key}.lora_B.weight"] = B.to(dtype)
        save_file(tensors, st, metadata={"format": "pt"})
        tmp = cf.with_name(cf.name + ".tmp")
        tmp.write_text(config)
        tmp.replace(cf)
        made += 1
    present = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "adapter_config.json").exists())
    if len(present) != models:
        raise SystemExit(f"{folder} holds {len(present)} adapters, not {models}: the analysis reads the whole "
                         f"folder; give an empty or matching --dir")
    return folder, made


def zoo_files(folder):
    return sorted(p for d in sorted(Path(folder).iterdir()) if d.is_dir() for p in d.iterdir() if p.is_file())


# ----------------------------------------------------------------------------------------------
# the plain-PyTorch script (run in a fresh process: --plain-child CASE)

def _scaling(cfg):
    return cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])


def plain_load(folder):
    """(scaling, state dict) of every adapter, in path order (ours' model order)."""
    from safetensors.torch import load_file

    out = []
    for d in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        cfg = json.loads((d / "adapter_config.json").read_text())
        out.append((_scaling(cfg), load_file(str(d / "adapter_model.safetensors"))))
    return out


def _slot(key):
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def plain_delta(adapters):
    """{"<module>.delta": {"delta": eigenvalues descending}}: per module the centred M x M Gram of
    s_i B_i A_i from the concatenated factors (never forming a dW), then eigh."""
    M = len(adapters)
    first = adapters[0][1]
    modules = sorted(k[:-len(".lora_A.weight")] for k in first if k.endswith(".lora_A.weight"))
    out = {}
    for mod in modules:
        Bc = torch.cat([sd[f"{mod}.lora_B.weight"].double() * s for s, sd in adapters], 1)  # [m, M r]
        Ac = torch.cat([sd[f"{mod}.lora_A.weight"].double() for s, sd in adapters], 0)  # [M r, n]
        r = Ac.shape[0] // M
        P = Bc.T @ Bc
        del Bc
        Q = Ac @ Ac.T
        del Ac
        K = P.mul_(Q).view(M, r, M, r).sum((1, 3))
        del P, Q
        Kc = K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()
        ev, _ = torch.linalg.eigh(Kc)
        out[_slot(mod) + ".delta"] = {"delta": ev.flip(0).tolist()}
    return out


def plain_factors(adapters):
    """{slot: {"out": eigenvalues, "in": eigenvalues}} for every lora_A / lora_B tensor: the centred
    [M, a, b] stack (B scaled by s), each unfolding's Gram X X^T in float64, eigh."""
    first = adapters[0][1]
    out = {}
    for key in sorted(k for k in first if ".lora_A." in k or ".lora_B." in k):
        scaled = ".lora_B." in key
        X = torch.stack([sd[key].double() * (s if scaled else 1.0) for s, sd in adapters])  # [M, a, b]
        X -= X.mean(0)
        M, a, b = X.shape
        entry = {}
        for mode, U in (("out", X.transpose(0, 1).reshape(a, M * b)), ("in", X.permute(2, 0, 1).reshape(b, M * a))):
            G = U @ U.T
            ev, _ = torch.linalg.eigh(G)
            entry[mode] = ev.flip(0).tolist()
            del G, U
        out[_slot(key)] = entry
        del X
    return out


def plain_child(case, folder, result):
    t0 = time.perf_counter()
    adapters = plain_load(folder)
    t1 = time.perf_counter()
    spectra = (plain_delta if case == "delta" else plain_factors)(adapters)
    t2 = time.perf_counter()
    Path(result).write_text(json.dumps({"load_s": t1 - t0, "compute_s": t2 - t1, "spectra": spectra}))


# ----------------------------------------------------------------------------------------------
# fresh processes, with their wall time and peak resident set

# Peak RSS of a child: ru_maxrss from wait4, read by a small intermediate process. Linux seeds a
# process's ru_maxrss at exec with the resident high-water mark of the memory image it replaces,
# i.e. of the process it was forked (or vfork-ed) from, so a child forked straight from this
# benchmark (which has held whole stacks of factors) could report *our* peak instead of its own
# (bench_analysis.py saw 397 MiB for a ~125 MiB run). /usr/bin/time (or, without it, a tiny Python
# wrapper that forks and execs) is a fresh small image: the measured command inherits only its
# few-MiB high-water mark, which is below any run measured here, and its own peak is what wait4
# reports for it. VmHWM from /proc/<pid>/status would be exact too but is gone once it exits.
_WRAPPER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(f"{ru.ru_maxrss}\n")
sys.exit(code if code >= 0 else 128 - code)
"""
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def measured_run(cmd, env, timeout=None):
    """(wall seconds, peak RSS in MiB, CompletedProcess) of ``cmd`` in a fresh process."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
        if TIME:
            full = [TIME, "-f", "%M", "-o", f.name, *map(str, cmd)]
        else:
            full = [sys.executable, "-c", _WRAPPER, f.name, *map(str, cmd)]
        t = time.perf_counter()
        proc = subprocess.run(full, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t
        lines = [l for l in Path(f.name).read_text().splitlines() if l.strip()]
    # GNU time writes "Command exited with non-zero status N" before the format on failure
    rss = int(lines[-1].split()[0]) / 1024 if lines and lines[-1].split()[0].isdigit() else float("nan")
    return wall, rss, proc


def child_env(args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "torch_ops"), env.get("PYTHONPATH", "")] if p)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    return env


def find_tool():
    """unisub-analyze: $UNISUB_ANALYZE, the CMake build folder (as the tests look), or PATH."""
    build = Path(os.environ.get("UNISUB_BUILD_DIR", ROOT / "build" / "cmake"))
    for cand in (os.environ.get("UNISUB_ANALYZE"), build / "csrc" / "tools" / "unisub-analyze",
                 build / "unisub-analyze", shutil.which("unisub-analyze")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


CASE_MODES = {"delta": ["delta"], "factors": ["out", "in"]}


def ours_cmd(front, case, zoo, out, tool, gram_precision=None):
    extra = ["--modes", *CASE_MODES[case], "--profile"]
    if gram_precision:
        extra += ["--gram-precision", gram_precision]
    if front == "cpp":
        return [tool, str(zoo), "--out", str(out), *extra]
    return [sys.executable, "-m", "unisub", "analyze", str(zoo), "--out", str(out), *extra, "--no-plots", "--quiet"]


def run_ours(front, case, zoo, out_root, tool, env, gram_precision=None):
    out = Path(out_root) / f"{front}-{case}"
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, proc = measured_run(ours_cmd(front, case, zoo, out, tool, gram_precision), env)
    res = {"seconds": wall, "peak_rss_mib": rss, "rc": proc.returncode}
    if proc.returncode:
        res["error"] = (proc.stderr or proc.stdout)[-2000:]
        return res
    report = json.loads((out / "report.json").read_text())
    res["profile"] = report.get("profile")
    res["plan"] = report.get("plan")
    res["spectra"] = {slot: {mode: [v * v for v in rep["singular_values"]] for mode, rep in e["modes"].items()}
                      for slot, e in report["slots"].items()}
    # how each slot's Grams were computed (docs/analysis.md, "Precision of the Grams"); absent in
    # reports written before --gram-precision existed: float64 then
    res["gram"] = {slot: e.get("gram", {"gemm": "float64"}) for slot, e in report["slots"].items()}
    res["skipped"] = report.get("skipped")
    shutil.rmtree(out, ignore_errors=True)
    return res


def run_plain(case, zoo, out_root, env):
    result = Path(out_root) / f"plain-{case}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-child", case, "--dir", str(zoo),
           "--plain-result", str(result)]
    wall, rss, proc = measured_run(cmd, env)
    res = {"seconds": wall, "peak_rss_mib": rss, "rc": proc.returncode}
    if proc.returncode:
        res["error"] = (proc.stderr or proc.stdout)[-2000:]
        return res
    data = json.loads(result.read_text())
    result.unlink()
    res.update(load_s=data["load_s"], compute_s=data["compute_s"], spectra=data["spectra"])
    return res


def idle_rss(tool, env, one_file):
    """Peak RSS of each program doing next to nothing: the floor its runs are measured above. The
    tool validates one adapter file (libtorch and libunisub loaded and initialised, 0.4 MiB read)."""
    cmds = {"python": [sys.executable, "-m", "unisub", "--version"],
            "plain": [sys.executable, "-c", "import torch, safetensors.torch"]}
    if tool:
        cmds = {"cpp": [tool, "--check-headers", str(one_file)], **cmds}
    out = {}
    for who, cmd in cmds.items():
        _, rss, proc = measured_run(cmd, env)
        if proc.returncode:
            print(f"idle run of {who} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}")
            rss = float("nan")
        out[who] = rss
    return out


def float32_bound(gram):
    """The error ours' report states for float32 GEMMs, relative to the (centred) trace: a mode
    slot's `relative_error_bound`, a delta slot's `estimated_relative_error`; 0 for float64."""
    if gram.get("gemm", "float64") == "float64":
        return 0.0
    return float(gram.get("relative_error_bound") or gram.get("estimated_relative_error") or 0.0)


def agreement(ours, plain, grams):
    """Eigenvalues of every slot and mode, ours against plain: (max |dl|/l_max, max |dl| / allowed,
    max relative difference over eigenvalues above 1e-6 l_max, a problem or None). Allowed:
    EIG_TOL l_max (two float64 Gram routes), plus the report's own error bound times the trace
    where ours took float32 GEMMs (docs/analysis.md: every eigenvalue moves by at most that)."""
    if sorted(ours) != sorted(plain):
        return None, None, None, (f"slots differ: ours only {sorted(set(ours) - set(plain))[:3]}, "
                                  f"plain only {sorted(set(plain) - set(ours))[:3]}")
    worst_abs = worst_allowed = worst_rel = 0.0
    for slot, modes in plain.items():
        for mode, ev_p in modes.items():
            a = torch.tensor(ours[slot][mode], dtype=torch.float64)
            b = torch.tensor(ev_p, dtype=torch.float64).clamp_min(0)
            if a.numel() != b.numel():
                return None, None, None, f"{slot} [{mode}]: {a.numel()} eigenvalues from ours, {b.numel()} from plain"
            top = max(float(b[0]), 1e-300)
            diff = float((a - b).abs().max())
            allowed = EIG_TOL * top + float32_bound(grams.get(slot, {})) * float(b.sum())
            worst_abs, worst_allowed = max(worst_abs, diff / top), max(worst_allowed, diff / allowed)
            big = b >= 1e-6 * top
            worst_rel = max(worst_rel, float(((a - b).abs() / b)[big].max()))
    return worst_abs, worst_allowed, worst_rel, None


# ----------------------------------------------------------------------------------------------
# in-process: GEMM rates, the Grams alone, the read time

def best_of(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_rate(dtype, n, reps=3):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    c = torch.empty(n, n, dtype=dtype)
    return n ** 3 / best_of(lambda: torch.mm(a, b, out=c), reps)


def stacked(zoo, layer, proj, raw=False):
    """(B [M, m, r] scaled by s, A [M, r, n]) in float64 from the files (our reader); raw: as
    stored (float16, B unscaled), what a delta slot's store holds."""
    from unisub.io import load_file

    key = module_key(layer, proj)
    Bs, As = [], []
    for d in sorted(p for p in Path(zoo).iterdir() if p.is_dir()):
        s = 1.0 if raw else _scaling(json.loads((d / "adapter_config.json").read_text()))
        sd = load_file(d / "adapter_model.safetensors")
        Bs.append(sd[f"{key}.lora_B.weight"] if raw else sd[f"{key}.lora_B.weight"].double() * s)
        As.append(sd[f"{key}.lora_A.weight"] if raw else sd[f"{key}.lora_A.weight"].double())
    return torch.stack(Bs), torch.stack(As)


def grams_alone(zoo, layers, cases, reps, rates):
    """Per module kind (layer 0's data; ``count`` = ``layers`` modules of that kind): seconds and
    GEMM fractions of the Grams the analysis computes, by each route."""
    rows = []

    def add(case, proj, factor, mode, what, dtype, shape, madds, fn):
        t = best_of(fn, reps)
        rows.append({"case": case, "proj": proj, "factor": factor, "mode": mode, "what": what,
                     "dtype": str(dtype)[6:], "shape": shape, "seconds": t, "count": layers,
                     "multiply_adds": madds, "gemm_fraction": madds / t / rates.get(dtype, rates[torch.float32])})

    for proj in MODULES:
        B, A = stacked(zoo, 0, proj)
        M, m, r = B.shape
        n = A.shape[2]
        if "delta" in cases:
            for dtype in (torch.float64, torch.float32):
                Bd, Ad = B.to(dtype), A.to(dtype)
                add("delta", proj, None, "delta", "lora_gram", dtype, f"M={M} m={m} r={r} n={n}",
                    (M * r) ** 2 * (m + n) / 2, lambda: torch.ops.unisub.lora_gram(Bd, Ad, False))
                del Bd, Ad
            # the store as the job holds it (float16, scalings applied to K afterwards): float32
            # GEMMs on AMX tiles where the CPU has them, else on converted panels
            B16, A16 = stacked(zoo, 0, proj, raw=True)
            if B16.dtype in (torch.float16, torch.bfloat16):
                add("delta", proj, None, "delta", "lora_gram", B16.dtype, f"M={M} m={m} r={r} n={n}",
                    (M * r) ** 2 * (m + n) / 2, lambda: torch.ops.unisub.lora_gram(B16, A16, False))
            del B16, A16
        if "factors" in cases:
            for factor, X in (("lora_A", A), ("lora_B", B)):
                X = X.contiguous()
                _, a, b = X.shape
                for mode, dim, d, other in (("out", 1, a, b), ("in", 2, b, a)):
                    shape, madds = f"{d} x {M * other}", d * (d + 1) / 2 * M * other
                    add("factors", proj, factor, mode, "mode_gram", torch.float64, shape, madds,
                        lambda: torch.ops.unisub.mode_gram(X, dim, True))
                    D = (X - X.mean(0)).contiguous()
                    G = torch.zeros(d, d, dtype=torch.float64)
                    add("factors", proj, factor, mode, "gram_update_", torch.float64, shape, madds,
                        lambda: torch.ops.unisub.gram_update_(G, D, dim))
                    U = (D.transpose(0, 1).reshape(a, M * b) if mode == "out"
                         else D.permute(2, 0, 1).reshape(b, M * a)).contiguous()
                    del D, G
                    for dtype in (torch.float64, torch.float32):
                        Ud = U.to(dtype)
                        add("factors", proj, factor, mode, "X X^T", dtype, shape, madds, lambda: Ud @ Ud.T)
                        del Ud
                    del U
        del B, A
    return rows


SLOT_KIND = re.compile(r"\.(q_proj|v_proj)\.(?:(lora_A|lora_B)\.weight|delta)$")


def gram_alone_total(case, rows, grams):
    """Seconds of the Grams alone for every slot ours analysed, on the route its report names:
    float64 -> the op the analysis runs, in float64 (lora_gram; gram_update_ of the centred stack
    for a mode); float32 GEMMs -> lora_gram on float32 factors for a delta, the plain float32 GEMM
    X X^T for a mode (no op of ours computes a mode Gram by float32 GEMMs alone); mixed -> float64.
    Returns (seconds, {slot: route})."""
    best = {}
    for r in rows:
        if r["case"] == case:
            key = (r["proj"], r["factor"], r["mode"], r["what"], r["dtype"])
            best[key] = min(best.get(key, float("inf")), r["seconds"])
    total, routes = 0.0, {}
    for slot, gram in grams.items():
        kind = SLOT_KIND.search(slot)
        if not kind:
            continue
        proj, factor = kind.group(1), kind.group(2)
        f32 = gram.get("gemm") == "float32"
        if case == "delta":
            # a 16-bit store's float32 GEMMs ran on AMX tiles: the yardstick is that same op on
            # the stored factors (faster than on float32 copies), where it was measured
            stored = [k for k in best if k[:4] == (proj, None, "delta", "lora_gram") and k[4] in ("float16", "bfloat16")]
            amx = f32 and gram.get("float32_kernel") == "amx_bfloat16_split" and stored
            total += best[stored[0]] if amx else best[proj, None, "delta", "lora_gram", "float32" if f32 else "float64"]
        else:
            what = ("X X^T", "float32") if f32 else ("gram_update_", "float64")
            total += sum(best[proj, factor, mode, *what] for mode in ("out", "in"))
        routes[slot] = ("float32 GEMMs" + (" (AMX)" if gram.get("float32_kernel") == "amx_bfloat16_split" else "")
                        if f32 else gram.get("gemm", "float64"))
    return total, routes


def read_time(files):
    """Seconds to `cat` every file to /dev/null (page cache warmed by a first pass)."""
    def cat():
        for i in range(0, len(files), 200):
            subprocess.run(["cat", *map(str, files[i:i + 200])], stdout=subprocess.DEVNULL, check=True)

    cat()
    return best_of(cat, 2)


# ----------------------------------------------------------------------------------------------
# bounds and the report

def bounds(M, layers, rank):
    """MiB: per case the bound "one slot's factors + accumulators" (stored float16 factors) and
    its variant with the factors in float64 (delta only)."""
    f16 = 2
    delta = {proj: M * rank * (m + n) for proj, (m, n) in MODULES.items()}
    big = max(delta.values())
    out = {"delta": (big * f16 + 8 * M * M) / MiB, "delta_f64": (big * 8 + 8 * M * M) / MiB}
    worst = 0
    for proj, (m, n) in MODULES.items():
        for a, b in ((rank, n), (m, rank)):  # lora_A [r, n], lora_B [m, r]
            acc = 3 * (8 * a * b + 8 * a * a + 8 * b * b)  # two halves + merged: mean and a Gram per mode
            worst = max(worst, M * a * b * f16 + acc)
    out["factors"] = worst / MiB
    return out


def load():
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def fmt_profile(profile):
    if not profile:
        return "(no profile)"
    parts = []
    for name, st in profile.get("stages", {}).items():
        sec = st.get("seconds", 0.0)
        if not sec:
            continue
        frac = st.get("gemm_fraction")
        # libunisub's gemm_fraction is against the GEMM rate of the stage's precision ("gram":
        # float64, "gram_float32": float32), measured in the same run
        parts.append(f"{name} {sec:.2f}" + (f" ({100 * frac:.0f}% of its GEMM rate)" if frac else ""))
    return ", ".join(parts)


def best_run(runs):
    ok = [r for r in runs if r["rc"] == 0]
    if not ok:
        return runs[-1]
    return {"seconds": min(r["seconds"] for r in ok), "peak_rss_mib": max(r["peak_rss_mib"] for r in ok),
            "rc": 0, "profile": min(ok, key=lambda r: r["seconds"]).get("profile"),
            "plan": ok[0].get("plan")}


def check(what, value, op, limit, unit):
    if value is None or value != value:
        return f"{what}: not measured"
    ok = value >= limit if op == ">=" else value <= limit
    return f"{what} {value:.2f}{unit} (target {op} {limit:.2f}{unit}: {'met' if ok else 'NOT met'})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", help="zoo folder (cached; default /tmp/unisub-lora-zoo-<models>-<layers>-r<rank>)")
    ap.add_argument("--cases", nargs="+", choices=["delta", "factors"], default=["delta", "factors"])
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the best of each is reported")
    ap.add_argument("--threads", type=int, default=1, help="threads of every process (default 1)")
    ap.add_argument("--gram-reps", type=int, default=3, help="best of N for the in-process Gram timings")
    ap.add_argument("--gemm-size", type=int, default=2048)
    ap.add_argument("--gram-precision", choices=["auto", "float64", "float32"],
                    help="passed to ours (default: not passed, the tools' default)")
    ap.add_argument("--json", metavar="PATH", help="save every number here")
    ap.add_argument("--plain-child", choices=["delta", "factors"], help=argparse.SUPPRESS)
    ap.add_argument("--plain-result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_child:
        return plain_child(args.plain_child, args.dir, args.plain_result)

    torch.set_num_threads(args.threads)
    import unisub  # noqa: F401  (loads libunisub: torch.ops.unisub.*)

    zoo = Path(args.dir or f"/tmp/unisub-lora-zoo-{args.models}-{args.layers}-r{args.rank}")
    t = time.perf_counter()
    zoo, made = make_zoo(zoo, args.models, args.layers, args.rank, args.seed)
    files = zoo_files(zoo)
    size = sum(p.stat().st_size for p in files)
    print(f"zoo {zoo}: {args.models} adapters x {args.layers} layers (q_proj, v_proj), r={args.rank} float16, "
          f"{size / MiB:.1f} MiB in {len(files)} files ({made} written now, {time.perf_counter() - t:.1f} s)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, load {load()}, "
          f"peak RSS via {TIME or 'a fork+exec wrapper (wait4)'}", flush=True)
    tool = find_tool()
    if tool is None:
        print("unisub-analyze not found (looked at $UNISUB_ANALYZE, build/cmake/csrc/tools, PATH): C++ runs skipped")
    env = child_env(args)
    idle = idle_rss(tool, env, files[0] if files[0].suffix == ".safetensors" else files[1])
    print("idle peak RSS MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in idle.items()), flush=True)

    rates = {dtype: gemm_rate(dtype, args.gemm_size) for dtype in (torch.float64, torch.float32)}
    print(f"GEMM {args.gemm_size}^3: float64 {rates[torch.float64]:.3g}, float32 {rates[torch.float32]:.3g} "
          f"multiply-adds/s", flush=True)

    fronts = (["cpp"] if tool else []) + ["python"]
    runs = {case: {k: [] for k in (*fronts, "plain")} for case in args.cases}
    agree = {case: {} for case in args.cases}
    reads, gram_rows = [], None
    failures = []
    with tempfile.TemporaryDirectory(prefix="unisub-lora-zoo-out-") as out_root:
        for rep in range(args.repeat):
            reads.append(read_time(files))
            print(f"[round {rep + 1}/{args.repeat}] read (cat, warm): {reads[-1]:.2f} s", flush=True)
            for case in args.cases:
                order = [f for f in fronts if f == "cpp"] + ["plain"] + ["python"]
                for who in order:
                    res = run_plain(case, zoo, out_root, env) if who == "plain" else \
                        run_ours(who, case, zoo, out_root, tool, env, args.gram_precision)
                    runs[case][who].append(res)
                    line = f"  {case:<8} {who:<7} {res['seconds']:8.2f} s  peak {res['peak_rss_mib']:8.1f} MiB"
                    if res["rc"]:
                        failures.append(f"{case} {who}: exit {res['rc']}: {res['error'].strip()[-600:]}")
                        print(line + f"  FAILED (exit {res['rc']}):\n{res['error'][-1500:]}", flush=True)
                        continue
                    if who == "plain":
                        line += f"  (load {res['load_s']:.2f} s, compute {res['compute_s']:.2f} s)"
                    else:
                        line += "  " + fmt_profile(res["profile"])
                    print(line, flush=True)
                plain = next((r for r in runs[case]["plain"] if r["rc"] == 0), None)
                for who in fronts:
                    mine = runs[case][who][-1]
                    if plain and mine["rc"] == 0 and who not in agree[case]:
                        agree[case][who] = agreement(mine["spectra"], plain["spectra"], mine["gram"])
            rows = grams_alone(zoo, args.layers, args.cases, args.gram_reps, rates)
            if gram_rows is None:
                gram_rows = rows
            else:
                for old, new in zip(gram_rows, rows):
                    if new["seconds"] < old["seconds"]:
                        old.update(seconds=new["seconds"], gemm_fraction=new["gemm_fraction"])

    # ---- report
    bound = bounds(args.models, args.layers, args.rank)
    print(f"\nload after: {load()}")
    rt = min(reads)
    print(f"read every file (cat to /dev/null, warm cache): {rt:.3f} s for {size / MiB:.1f} MiB "
          f"({size / rt / 1e9:.2f} GB/s)")
    print("\nGrams alone (in this process, best of %d; x count = every module of that kind):" % args.gram_reps)
    print(f"  {'slot':<22} {'what':<20} {'shape':<28} {'s':>9} {'x':>3} {'madds':>9} {'of GEMM':>8}")
    for r in gram_rows:
        slot = f"{r['proj']} dW" if r["case"] == "delta" else f"{r['proj']}.{r['factor']} [{r['mode']}]"
        print(f"  {slot:<22} {r['what'] + ' ' + r['dtype']:<20} {r['shape']:<28} {r['seconds']:9.4f} "
              f"{r['count']:>3} {r['multiply_adds']:9.3g} {100 * r['gemm_fraction']:7.1f}%")
    print("  (of GEMM: multiply-adds counted as a triangle of each symmetric Gram, over the GEMM rate of the "
          "row's dtype)")

    def cell(r, key="seconds", f="{:.2f}"):
        return "-" if r is None else f.format(r[key]) if r["rc"] == 0 else "FAIL"

    summary = {}
    print("\n| case | ours C++ s | ours Py s | plain s | plain/C++ | plain/Py | peak RSS MiB C++ / Py / plain "
          "(above idle) | bound MiB | Gram alone s | C++/Gram | Py/Gram |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        b = {who: best_run(rs) for who, rs in runs[case].items()}
        cpp, py, plain = b.get("cpp"), b["python"], b["plain"]
        ran = next((r for w in fronts for r in runs[case][w] if r["rc"] == 0), None)
        g, routes = gram_alone_total(case, gram_rows, ran["gram"]) if ran else (float("nan"), {})

        def ratio(x, y):
            return x["seconds"] / y["seconds"] if x and y and x["rc"] == 0 and y["rc"] == 0 else None

        def above(who):
            r = b.get(who)
            return r["peak_rss_mib"] - idle.get(who, float("nan")) if r and r["rc"] == 0 else None

        sp = {w: ratio(plain, b.get(w)) for w in fronts}
        gr = {w: (b[w]["seconds"] / g if b[w]["rc"] == 0 and g > 0 else None) for w in fronts}
        rss = " / ".join(f"{cell(b.get(w), 'peak_rss_mib', '{:.0f}')}"
                         + (f" (+{above(w):.0f})" if above(w) is not None else "") for w in ("cpp", "python", "plain"))
        fr = lambda v: f"{v:.2f}x" if v is not None else "-"  # noqa: E731
        print(f"| {case} | {cell(cpp)} | {cell(py)} | {cell(plain)} | {fr(sp.get('cpp'))} | {fr(sp.get('python'))} | "
              f"{rss} | {bound[case]:.1f} | {g:.2f} | {fr(gr.get('cpp'))} | {fr(gr.get('python'))} |")
        summary[case] = {"best": b, "speedup": sp, "total_over_gram": gr, "gram_alone_s": g, "gram_routes": routes,
                         "bound_mib": bound[case],
                         "peak_above_idle_mib": {w: above(w) for w in (*fronts, "plain")}, "agreement": agree[case]}

    print()
    for case in args.cases:
        s = summary[case]
        for who in fronts:
            a = s["agreement"].get(who)
            if a is None:
                print(f"{case} {who}: eigenvalues not compared (a run failed)")
            elif a[3]:
                print(f"{case} {who}: eigenvalues NOT comparable: {a[3]}")
                failures.append(f"{case} {who}: {a[3]}")
            else:
                ok = a[1] <= 1
                print(f"{case} {who}: eigenvalues vs plain: max |dl|/l_max {a[0]:.2e}, {a[1]:.2g} of the tolerance "
                      f"({'ok' if ok else 'FAILED'}; {EIG_TOL:g} l_max + the report's float32 bound x trace), "
                      f"max relative difference above 1e-6 l_max {a[2]:.2e}")
                if not ok:
                    failures.append(f"{case} {who}: eigenvalues differ by {a[0]:.2e} l_max, {a[1]:.2g}x the tolerance")
        kinds = {}
        for route in s["gram_routes"].values():
            kinds[route] = kinds.get(route, 0) + 1
        print(f"{case}: ours' Gram routes (report \"gram\"): "
              + ", ".join(f"{k} in {v} slot(s)" for k, v in kinds.items()))
        best = s["best"]
        plan = next((best[w].get("plan") for w in fronts if best[w]["rc"] == 0 and best[w].get("plan")), None)
        if plan and plan.get("peak_bytes"):
            print(f"{case}: plan's estimate: peak {plan['peak_bytes'] / MiB:.1f} MiB, "
                  f"{plan.get('multiply_adds', 0):.3g} multiply-adds")
        elif plan:
            print(f"{case}: the plan (report.json \"plan\") has no estimate for these slots: {plan}")
        for who in fronts:
            if best[who]["rc"] == 0:
                print(f"{case} {who} profile (fastest run): {fmt_profile(best[who].get('profile'))}")
        for who in fronts:
            if best[who]["rc"]:
                continue
            sp, gr, ab = s["speedup"][who], s["total_over_gram"][who], s["peak_above_idle_mib"][who]
            parts = [check("speed: plain/ours", sp, ">=", TARGET_SPEEDUP, "x"),
                     check("memory: peak above idle", ab, "<=", s["bound_mib"], " MiB")
                     + (f" (the bound with float64 factors: {bound['delta_f64']:.1f} MiB)" if case == "delta" else ""),
                     check("total / Gram alone", gr, "<=", TARGET_GRAM_RATIO, "x")]
            print(f"{case} {who} targets: " + "; ".join(parts))
    if failures:
        print("\nproblems:\n  " + "\n  ".join(failures))

    if args.json:
        def clean(r):
            return {k: v for k, v in r.items() if k != "spectra"}

        data = {"meta": {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
                         "load_after": load(), "models": args.models, "layers": args.layers, "rank": args.rank,
                         "zoo": str(zoo), "zoo_bytes": size, "files": len(files), "rss_via": TIME or "wrapper",
                         "eig_tolerance": EIG_TOL},
                "gemm_rate": {"float64": rates[torch.float64], "float32": rates[torch.float32], "n": args.gemm_size},
                "read_seconds": reads, "idle_peak_rss_mib": idle, "bounds_mib": bound, "grams_alone": gram_rows,
                "runs": {c: {w: [clean(r) for r in rs] for w, rs in ws.items()} for c, ws in runs.items()},
                "summary": {c: {**{k: v for k, v in s.items() if k != "best"},
                                "best": {w: {k: v for k, v in r.items()} for w, r in s["best"].items()}}
                            for c, s in summary.items()},
                "problems": failures}
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
        print(f"wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
