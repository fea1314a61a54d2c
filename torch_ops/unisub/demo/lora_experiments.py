"""The MiniLM demo's experiments: the paper's LoRA experiment with controls, on the zoo of
``demo.minilm``.

Each function computes its numbers now and returns plain values. Models that have to be *trained*
for an experiment (held-out tasks, projected fine-tuning) are trained once and kept in the zoo's
cache (``runs/``: the trained tensors and the training log), like the zoo itself; every accuracy,
spectrum, merge, compression and export is recomputed from the weights on every run."""
import json
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import lora as ul
from ..analysis import analyze
from ..nn import SubspaceLoRALinear
from ..projector import GradientProjector
from ..tracker import ConvergenceTracker
from . import minilm as ml

TAUS_KEY = "0.9"


def factor_of(slot: str) -> str:
    if slot.endswith(".delta"):
        return "ΔW"
    return "A" if ".lora_A." in slot else "B"


def module_of_slot(slot: str) -> str:
    for tag in (".lora_A.", ".lora_B.", ".delta"):
        if tag in slot:
            return slot.split(tag)[0]
    return slot


def rank_at(evals: Sequence[float], tau: float = 0.9) -> int:
    """The smallest r whose cumulative share of ``evals`` reaches tau (a null's r(τ))."""
    ev = sorted((max(0.0, float(v)) for v in evals), reverse=True)
    total = sum(ev)
    if total <= 0:
        return 0
    acc = 0.0
    for i, v in enumerate(ev):
        acc += v
        if acc >= tau * total * (1 - 1e-12):
            return i + 1
    return len(ev)


# ------------------------------------------------------------------------------------- analysis
def analysis(zoo: ml.MiniLMZoo, out: Path, log=print) -> Dict:
    """``unisub.analyze`` on each sub-zoo (modes out, in and delta) and one row per slot and mode."""
    rows, reports = [], {}
    for s in ml.SUBZOOS:
        folder = out / "analysis" / s
        start = time.perf_counter()
        analyze([str(p) for p in zoo.adapters[s]], modes=("out", "in", "delta"), energy=0.9, out=folder,
                progress=False, plots=False)
        rep = json.loads((folder / "report.json").read_text())
        reports[s] = rep
        for slot, e in rep["slots"].items():
            for mode, m in e["modes"].items():
                null = m["null"]
                r = m["rank_at_tau"][TAUS_KEY]
                halves = m.get("split_half") or {}  # None with too few models to split
                nan = float("nan")
                rows.append({"subzoo": s, "slot": slot, "module": module_of_slot(slot), "factor": factor_of(slot),
                             "mode": mode, "dim": m["dim"], "models": e["models"], "r90": r,
                             "ev_at_r": m["cumulative_explained_variance"][r - 1],
                             "null_ev_at_r": null["gaussian_stack_cumulative_at_rank"],
                             "null_r90": rank_at(null["gaussian_stack_eigenvalues"]),
                             "mp_r90": rank_at(null["marchenko_pastur_eigenvalues"]),
                             "above_mp_edge": null["components_above_mp_edge"],
                             "mean_share": e["energy"]["mean_share"],
                             "split_half_max_sin": halves.get("max_sin", nan),
                             "split_half_mean_cos2": halves.get("mean_cos2", nan)})
        log(f"analysis: {s}: {len(rep['slots'])} slots ({len(zoo.adapters[s])} adapters) in "
            f"{time.perf_counter() - start:.1f} s -> {folder}")
    return {"rows": rows, "reports": reports}


def summarise(rows: List[Dict]) -> List[Dict]:
    """Per sub-zoo, factor and mode: means over the modules (every module of a group has the same
    shape, so the means are over like quantities)."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["subzoo"], r["factor"], r["mode"]), []).append(r)
    out = []
    for (s, f, mode), rs in groups.items():
        n = len(rs)
        mean = lambda k: sum(r[k] for r in rs) / n  # noqa: E731
        out.append({"subzoo": s, "factor": f, "mode": mode, "where": f"{f} [{mode}]", "modules": n,
                    "dim": rs[0]["dim"], "models": rs[0]["models"], "r90": mean("r90"), "null_r90": mean("null_r90"),
                    "ev_at_r": mean("ev_at_r"), "null_ev_at_r": mean("null_ev_at_r"),
                    "gain_points": 100 * (mean("ev_at_r") - mean("null_ev_at_r")),
                    "above_mp_edge": mean("above_mp_edge"), "mean_share": mean("mean_share"),
                    "split_half_max_sin": mean("split_half_max_sin"),
                    "split_half_mean_cos2": mean("split_half_mean_cos2")})
    order = {("A", "in"): 0, ("B", "out"): 1, ("ΔW", "delta"): 2, ("A", "out"): 3, ("B", "in"): 4}
    return sorted(out, key=lambda r: (ml.SUBZOOS.index(r["subzoo"]), order.get((r["factor"], r["mode"]), 9)))


# ------------------------------------------------------------------------------ initialisation
def _row_basis(A: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (in × r) of A's row space."""
    Q, _ = torch.linalg.qr(A.double().T)
    return Q


def _share_in(A: torch.Tensor, Q: torch.Tensor) -> float:
    A = A.double()
    return float((A @ Q).pow(2).sum() / A.pow(2).sum())


def initialisation(zoo: ml.MiniLMZoo, log=print) -> Dict:
    """How much of the trained lora_A factors is their initialisation: the share of each trained
    A's energy in the row space of the A it started from (shared-init: the common one; own-init:
    its own), the same for an unrelated init (the control: ~r/in for a random r-dim space), and
    the share of the training's change A − A₀ in that row space."""
    from ..lora.adapters import open_adapters

    c = zoo.config
    shared0 = ml.initial_A(c, ml.init_seed(c, "shared-init", 0))
    out = {}
    for s in ml.SUBZOOS:
        own, foreign, change, rel_change = [], [], [], []
        for t, folder in zip(zoo.tasks, zoo.adapters[s]):
            ck = open_adapters([folder])[0]
            A0s = shared0 if s == "shared-init" else ml.initial_A(c, ml.init_seed(c, s, t))
            other = shared0 if s == "own-init" else ml.initial_A(c, ml.init_seed(c, "own-init", t))
            for mod, A0 in A0s.items():
                A = ck.get_unscaled(f"{mod}.lora_A.weight").double()
                Q0 = _row_basis(A0)
                own.append(_share_in(A, Q0))
                foreign.append(_share_in(A, _row_basis(other[mod])))
                D = A - A0.double()
                change.append(_share_in(D, Q0) if float(D.pow(2).sum()) > 0 else float("nan"))
                rel_change.append(float(D.norm() / A0.double().norm()))
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        out[s] = {"A_energy_in_own_init_rows": mean(own), "A_energy_in_unrelated_init_rows": mean(foreign),
                  "change_energy_in_init_rows": mean(change), "relative_change": mean(rel_change),
                  "chance": c.rank / 384}
        log(f"initialisation: {s}: trained A keeps {mean(own):.1%} of its energy in its initial row space "
            f"({mean(foreign):.1%} in an unrelated init's); ‖A − A₀‖/‖A₀‖ = {mean(rel_change):.3f}")
    return out


# --------------------------------------------------------------------------- trained-run cache
def cached_run(zoo: ml.MiniLMZoo, name: str, build: Callable, train: Callable, log=print):
    """``build()`` -> (model, head, params); ``train(model, head, params)`` -> metadata dict.
    The trained tensors (params by name, the head) and the metadata are kept in the zoo's cache
    under ``runs/``; a later run rebuilds the same model and loads them instead of training."""
    from ..io.safetensors import SafetensorsFile, save_file

    folder = zoo.root / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    path, meta_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    model, head, params = build()
    ids = {id(p) for p in params}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    if path.exists() and meta_path.exists():
        f = SafetensorsFile(path)
        state = {k: f.get(k) for k in f.keys()}
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n in names:
                named[n].copy_(state["model::" + n])
            head.load_state_dict({k[len("head::"):]: v for k, v in state.items() if k.startswith("head::")})
        meta = json.loads(meta_path.read_text())
        meta["cached"] = True
        return model, head, meta
    meta = train(model, head, params)
    named = dict(model.named_parameters())
    tensors = {"model::" + n: named[n].detach().contiguous() for n in names}
    tensors.update({"head::" + k: v.detach().contiguous() for k, v in head.state_dict().items()})
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    meta_path.write_text(json.dumps(meta))
    tmp.replace(path)
    meta["cached"] = False
    return model, head, meta


# ---------------------------------------------------------------------------- held-out tasks
def _frozen_base() -> torch.nn.Module:
    model = ml.base_model()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def attach_bases(model: torch.nn.Module, bases: Dict[str, tuple], c: ml.MiniLMConfig, seed: int) -> List:
    """Swap each module for a ``SubspaceLoRALinear`` on bases {module: (U out × k, V in × k)}: only
    the loadings train (2·k·r per module). The generator is seeded alike for every basis, so the
    universal and the random subspace start from the same loadings."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for mod, (U, V) in bases.items():
        parent, _, attr = mod.rpartition(".")
        owner = model.get_submodule(parent)
        layer = SubspaceLoRALinear(getattr(owner, attr), V.float(), U.float(), c.rank, alpha=float(c.alpha),
                                   generator=g)
        setattr(owner, attr, layer)
        params += [layer.L_A, layer.L_B]
    return params


def zoo_bases(zoo: ml.MiniLMZoo, subzoo: str, k: int) -> Dict[str, tuple]:
    """{module: (U, V)}: the rank-k out / in subspaces of the sub-zoo's ΔW (``unisub.lora.compress``)."""
    z = ul.compress([str(p) for p in zoo.adapters[subzoo]], rank=k, dtype=torch.float64)
    return {mod: (mb.U, mb.V) for mod, mb in z.modules.items()}


def random_bases(like: Dict[str, tuple], seed: int) -> Dict[str, tuple]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for mod, (U, V) in like.items():
        out[mod] = tuple(torch.linalg.qr(torch.randn(X.shape[0], X.shape[1], generator=g, dtype=torch.float64))[0]
                         for X in (U, V))
    return out


def held_out(zoo: ml.MiniLMZoo, k: int, log=print) -> List[Dict]:
    """On each held-out task, the same steps and learning rate for: no adapter (MiniLM with the
    task's readout; trained alone when ``train_head``), plain LoRA, and LoRA whose factors live in
    a rank-k subspace (only the loadings train) — the own-init zoo's, the shared-init zoo's, and a
    random one."""
    c = zoo.config
    bases = {s: zoo_bases(zoo, s, k) for s in ml.SUBZOOS}
    rnd = random_bases(bases["own-init"], 4242 + c.seed)
    rows = []
    for task in zoo.held_out_tasks:
        def lora_model(task=task):
            model = ml.peft_model(c, ml.init_seed(c, "own-init", task))
            return model, ml.make_head(c.seed, task), [p for p in model.parameters() if p.requires_grad]

        def head_only(task=task):
            return _frozen_base(), ml.make_head(c.seed, task), []

        def in_subspace(b, task=task):
            def build():
                model = _frozen_base()
                return model, ml.make_head(c.seed, task), attach_bases(model, b, c, 77 + task)
            return build

        methods = [("no adapter" + (" (head trained)" if c.train_head else ""), head_only), (f"LoRA r={c.rank}", lora_model),
                   (f"subspace k={k}, own-init zoo", in_subspace(bases["own-init"])),
                   (f"subspace k={k}, shared-init zoo", in_subspace(bases["shared-init"])),
                   (f"subspace k={k}, random", in_subspace(rnd))]
        for name, build in methods:
            # Adam moves every trained number by about lr per step: k·r loadings move B = U L_B (and A)
            # by about √(k/d) of what LoRA's d·r entries do. The subspace runs get lr·√(d/k), so that
            # every method's factors move alike per step (the universal-vs-random comparison is at one lr).
            lr = c.lr * (ml.HIDDEN / k) ** 0.5 if name.startswith("subspace") else c.lr

            def train(model, head, params, task=task, lr=lr):
                model.train()
                return {"seconds_per_step": ml.fit(model, head, params, c, task, lr=lr), "lr": lr}

            tag = re.sub(r"[^A-Za-z0-9=]+", "-", name).strip("-") + f"-lr{lr:.3g}"
            model, head, meta = cached_run(zoo, f"heldout-task{task:03d}-{tag}", build, train, log)
            params = [p for p in model.parameters() if p.requires_grad]
            acc = ml.head_accuracy(head, ml.features(model, c), c, task)
            rows.append({"task": task, "method": name, "accuracy": acc, "trainable": ml.trainable(params), "lr": lr,
                         "head_params": ml.trainable(head.parameters()) if c.train_head else 0,
                         "ms_per_step": 1e3 * meta["seconds_per_step"], "cached": meta["cached"]})
            log(f"held-out task {task}: {name:<32} accuracy {acc:.3f}, {rows[-1]['trainable']:,} trainable"
                f"{' (+%d head)' % rows[-1]['head_params'] if rows[-1]['head_params'] else ''}"
                f"{' (trained earlier, cached)' if meta['cached'] else ''}")
    return rows


# ------------------------------------------------------------------------------- per-adapter
def adapter_accuracies(zoo: ml.MiniLMZoo, full: str = "own-init", spot: int = 3, log=print) -> Dict:
    """Adapters on their own tasks (with their readouts): every adapter of the ``full`` sub-zoo (the
    one merged and compressed below), the first ``spot`` of the other (a check that both sub-zoos
    train alike; each evaluation is a forward pass over the test set, the warm run's largest cost),
    and the base model with each task's readout."""
    c = zoo.config
    out = {}
    for s in ml.SUBZOOS:
        n = len(zoo.tasks) if s == full else min(spot, len(zoo.tasks))
        out[s] = [ml.head_accuracy(zoo.head(s, i), ml.features(zoo.adapted(zoo.adapters[s][i]), c), c, zoo.tasks[i])
                  for i in range(n)]
        log(f"adapters: {s}: mean accuracy on their own tasks {sum(out[s]) / n:.3f} ({n} of {len(zoo.tasks)} evaluated)")
    base = ml.features(ml.base_model(), c)
    out["base_with_heads"] = {s: [ml.head_accuracy(zoo.head(s, i), base, c, t) for i, t in enumerate(zoo.tasks)]
                              for s in ml.SUBZOOS}
    log(f"adapters: no adapter (base model, each task's readout): mean accuracy "
        f"{sum(out['base_with_heads'][full]) / len(zoo.tasks):.3f}")
    return out


# -------------------------------------------------------------------------------------- merging
def merging(zoo: ml.MiniLMZoo, subzoo: str, count: int, k: int, out: Path, own: List[float], log=print) -> Dict:
    """Merge the first ``count`` adapters of a sub-zoo (``unisub.lora.merge``) and evaluate the
    merged model on every task of the sub-zoo, each with its own head."""
    c = zoo.config
    folders = [str(p) for p in zoo.adapters[subzoo][:count]]
    heads = [zoo.head(subzoo, i) for i in range(len(zoo.tasks))]
    specs = [("mean", {}), ("task arithmetic (λ=0.5)", {"method": "task_arithmetic", "scale": 0.5}),
             ("TIES (density 0.2)", {"method": "ties", "density": 0.2}),
             ("DARE (drop 0.5, λ=0.5)", {"method": "dare", "drop": 0.5, "scale": 0.5, "seed": c.seed}),
             (f"subspace (rank {k}, λ=0.5)", {"method": "subspace", "rank": k, "energy": None, "scale": 0.5})]
    results = {"adapters merged": count, "tasks": zoo.tasks, "subzoo": subzoo, "methods": {}}
    for name, kw in specs:
        folder = out / "merged" / subzoo / name.split(" ")[0].lower()
        rep = ul.merge(folders, folder, **{"method": "mean", **kw})
        feats = ml.features(zoo.adapted(folder), c)
        accs = [ml.head_accuracy(h, feats, c, t) for h, t in zip(heads, zoo.tasks)]
        results["methods"][name] = {"per_task": accs, "merged_mean": sum(accs[:count]) / count,
                                    "others_mean": (sum(accs[count:]) / max(1, len(accs) - count)
                                                    if len(accs) > count else None),
                                    "worst_module_error": rep["worst_module_error"]}
        log(f"merging: {name:<26} mean accuracy on the {count} merged tasks "
            f"{results['methods'][name]['merged_mean']:.3f}")
    results["each adapter on its own task"] = {"merged_mean": sum(own[:count]) / count}
    return results


# ---------------------------------------------------------------------------------- compression
def compression(zoo: ml.MiniLMZoo, subzoo: str, ranks: Sequence[int], evaluate: int, out: Path,
                own: List[float], log=print) -> Dict:
    """The sub-zoo compressed into one shared subspace per module (``unisub.lora.compress``) at
    several ranks; the first ``evaluate`` adapters exported back to PEFT (``unisub.lora.export``),
    reloaded with ``PeftModel.from_pretrained`` and evaluated on their tasks."""
    c = zoo.config
    folders = [str(p) for p in zoo.adapters[subzoo]]
    lossless = ul.compress(folders)
    rows = []
    for k in list(ranks):
        z = ul.compress(folders, rank=k)
        z.save(out / f"compressed-{subzoo}-rank{k}.safetensors")
        z = ul.LoraZoo.load(out / f"compressed-{subzoo}-rank{k}.safetensors")
        accs, errs = [], []
        for i in range(min(evaluate, z.count)):
            folder = out / "exported" / f"rank{k}" / z.names[i]
            e = ul.export(z, i, folder)
            errs.append(e["relative_error"])
            accs.append(ml.head_accuracy(zoo.head(subzoo, i), ml.features(zoo.adapted(folder), c), c, zoo.tasks[i]))
        st = z.storage()
        n = len(accs)
        rows.append({"rank": k, "ratio": st["ratio"], "bytes": st["compressed_bytes"],
                     "original_bytes": st["original_bytes"], "mean_relative_error": sum(z.error(i)["relative_error"]
                                                                                         for i in range(z.count)) / z.count,
                     "exported": n, "accuracy": sum(accs) / n, "original_accuracy": sum(own[:n]) / n,
                     "export_error": max(errs)})
        log(f"compression: rank {k}: {st['ratio']:.1f}x smaller, relative error {rows[-1]['mean_relative_error']:.3f}; "
            f"{n} adapters exported to PEFT and reloaded: accuracy {rows[-1]['accuracy']:.3f} "
            f"(originals {rows[-1]['original_accuracy']:.3f})")
    worst = max(e["relative_error"] for e in lossless.errors())
    return {"subzoo": subzoo, "rows": rows, "lossless_worst_error": worst,
            "lossless_ratio": lossless.storage()["ratio"]}


# ----------------------------------------------------------------------------------- projection
def projection(zoo: ml.MiniLMZoo, k: int, out: Path, log=print) -> List[Dict]:
    """Fine-tuning MiniLM's query / value weights (and the head) on a held-out task with the
    updates unprojected, projected onto the own-init zoo's rank-k ΔW subspaces, and onto their
    complement (``GradientProjector.attach``), ``ConvergenceTracker`` on."""
    c = zoo.config
    task = zoo.held_out_tasks[0]
    b = {f"{mod}.weight": UV for mod, UV in zoo_bases(zoo, "own-init", k).items()}
    runs = []
    for method in ("unprojected", "projected", "complement"):
        def build():
            model = ml.base_model()
            for n, p in model.named_parameters():
                p.requires_grad_(n in b)
            return model, ml.make_head(c.seed, task), [p for n, p in model.named_parameters() if n in b]

        def train(model, head, params, method=method):
            groups = [{"params": params, "lr": c.lr / 10}]
            if c.train_head:
                groups.append({"params": list(head.parameters()), "lr": c.head_lr})
            opt = torch.optim.AdamW(groups, weight_decay=0.0)
            proj = None
            if method != "unprojected":
                proj = GradientProjector(model, b, complement=(method == "complement")).attach(opt)
            tracker = ConvergenceTracker(model, b, every=max(1, c.steps // 8), window=4, seed=task)
            log_rows = []

            def after():
                r = tracker.step()
                if r:
                    log_rows.append({k2: r[k2] for k2 in ("mean/update_energy", "mean/grad_energy", "mean/max_angle")
                                     if k2 in r})

            model.train()
            sec = ml.fit(model, head, params, c, task, after_step=after, optimizer=opt)
            tracker.close()
            if proj is not None:
                proj.remove()
            return {"seconds_per_step": sec, "log": log_rows}

        model, head, meta = cached_run(zoo, f"projection-task{task:03d}-k{k}-{method}", build, train, log)
        acc = ml.head_accuracy(head, ml.features(model, c), c, task)
        last = meta["log"][-1] if meta["log"] else {}
        runs.append({"method": method, "accuracy": acc, "ms_per_step": 1e3 * meta["seconds_per_step"],
                     "update_energy": last.get("mean/update_energy", float("nan")),
                     "grad_energy": last.get("mean/grad_energy", float("nan")),
                     "max_angle_rad": last.get("mean/max_angle", float("nan")), "log": meta["log"],
                     "cached": meta["cached"]})
        log(f"projection: {method:<12} accuracy {acc:.3f}, update energy in the subspace "
            f"{runs[-1]['update_energy']:.3f}")
    return runs
