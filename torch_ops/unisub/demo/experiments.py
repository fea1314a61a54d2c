"""The demo's experiments on the digits zoo (issue: the paper's claims tested on a zoo built here).

Each function runs its experiment now and returns plain numbers (no stored results)."""
import time
from typing import Dict, List, Sequence

import torch

from ..accumulator import SubspaceAccumulator
from ..compression import compress
from ..merging import merge
from ..nn import SubspaceLoRALinear, train_coefficients
from ..projector import GradientProjector
from ..subspace import Subspace
from ..tracker import ConvergenceTracker
from .zoo import LAYERS, Zoo, accuracy, task_data, train


def fit_subspaces(zoo: Zoo, paths: Sequence, layers: Sequence[str] = LAYERS) -> Dict[str, Subspace]:
    """Full-rank centred mode-wise subspaces of ``paths`` per layer (callers slice the rank)."""
    states = [zoo.load(p) for p in paths]
    out = {}
    for name in layers:
        acc = SubspaceAccumulator(modes=("out", "in"), center=True)
        for sd in states:
            acc.update(sd[name][None])
        out[name] = acc.finalize(slot=name)
    return out


def truncated(sub: Subspace, k: int) -> Subspace:
    return Subspace(sub.slot, sub.mean, {m: B[:, :k] for m, B in sub.bases.items()}, sub.eigenvalues, sub.count,
                    sub.center, sub.metadata)


def bases(subspaces: Dict[str, Subspace], k: int) -> Dict[str, tuple]:
    """``{layer: (U_k, V_k)}`` in float32 for the training tools."""
    return {n: (s.bases["out"][:, :k].float(), s.bases["in"][:, :k].float()) for n, s in subspaces.items()}


def random_bases(subspaces: Dict[str, Subspace], k: int, seed: int) -> Dict[str, tuple]:
    """Random orthonormal bases of the same shapes: the control for 'universal' vs 'any subspace'."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, s in subspaces.items():
        m, n_ = s.mean.shape
        U = torch.linalg.qr(torch.randn(m, min(k, m), generator=g, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(n_, min(k, n_), generator=g, dtype=torch.float64))[0]
        out[n] = (U.float(), V.float())
    return out


def reconstruction(zoo: Zoo, subspaces: Dict[str, Subspace], ranks: Sequence[int]) -> Dict:
    """Unseen models replaced by μ + U_k U_kᵀ (W − μ) V_k V_kᵀ in every analysed layer: accuracy on
    their own task before, with the mean alone (k = 0), and at each k."""
    rows = {"original": [], "mean_only": [], **{str(k): [] for k in ranks}}
    for path, task in zip(zoo.held_out, zoo.held_out_tasks):
        _, test = task_data(zoo, task)
        model = zoo.model(path)
        rows["original"].append(accuracy(model, test))
        state = zoo.load(path)
        for k in [0, *ranks]:
            m = zoo.model(path)
            with torch.no_grad():
                for name, s in subspaces.items():
                    W = state[name].double()
                    rec = s.mean if k == 0 else truncated(s, k).reconstruct(truncated(s, k).coefficients(W))
                    m.get_parameter(name).copy_(rec.float())
            rows["mean_only" if k == 0 else str(k)].append(accuracy(m, test))
    return {k: sum(v) / len(v) for k, v in rows.items()}


def _lora(model, layer_bases, rank, alpha, generator):
    """Replace each analysed Linear by SubspaceLoRALinear (identity bases: plain LoRA)."""
    for name, (U, V) in layer_bases.items():
        idx = name.split(".")[0]
        base = model.get_submodule(idx)
        A = V if V is not None else torch.eye(base.in_features)
        B = U if U is not None else torch.eye(base.out_features)
        setattr(model, idx, SubspaceLoRALinear(base, A, B, rank=rank, alpha=alpha, generator=generator))
    return [p for p in model.parameters() if p.requires_grad]


def training(zoo: Zoo, subspaces: Dict[str, Subspace], rank: int, task: int, steps: int, lr: float) -> List[Dict]:
    """A held-out task learnt from the base model: full fine-tuning, coefficient-only training in
    the zoo's subspace and in a random one, plain LoRA and LoRA with the zoo's bases."""
    train_data, test_data = task_data(zoo, task)
    runs = []
    identity = {n: (None, None) for n in subspaces}
    for method in ("full", "coefficients (universal)", "coefficients (random)", "LoRA r=4", "LoRA r=4 in subspace"):
        torch.manual_seed(task)
        g = torch.Generator().manual_seed(1000 + task)
        model = zoo.model(zoo.base)
        if method == "full":
            params, method_lr = list(model.parameters()), lr
        elif method.startswith("coefficients"):
            b = bases(subspaces, rank) if "universal" in method else random_bases(subspaces, rank, seed=task)
            # keep_residual: start from the base's exact function; only U C Vᵀ moves
            params, method_lr = train_coefficients(model, b, keep_residual=True), 10 * lr
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            b = bases(subspaces, rank) if "subspace" in method else identity
            params, method_lr = _lora(model, b, 4, 8.0, g), 3 * lr
        opt = torch.optim.AdamW(params, lr=method_lr, weight_decay=0.0 if method != "full" else 1e-2)
        seconds = train(model, opt, train_data, steps, zoo.config.batch, g)
        runs.append({"method": method, "accuracy": accuracy(model, test_data),
                     "trainable": sum(p.numel() for p in params), "ms_per_step": 1e3 * seconds})
    return runs


def merging(zoo: Zoo, count: int, rank: int) -> Dict:
    """Merge the backbones (layers 0 and 2) of ``count`` fine-tuned models; evaluate each task with
    the merged backbone and that task's own head (layer 4), the usual protocol for merging
    models with task-specific heads."""
    paths, tasks = zoo.finetuned[:count], zoo.finetuned_tasks[:count]
    states = [zoo.load(p) for p in paths]
    base = zoo.load(zoo.base)
    backbone = [k for k in base if not k.startswith("4.")]
    merged = {
        "mean": merge(states, "mean", keys=backbone),
        "task arithmetic (λ=0.4)": merge(states, "task_arithmetic", base=base, scale=0.4, keys=backbone),
        "ties (density 0.2)": merge(states, "ties", base=base, density=0.2, keys=backbone),
        f"subspace (rank {rank}, λ=0.4)": merge(states, "subspace", base=base, rank=rank, energy=None, scale=0.4,
                                                keys=backbone),
        "subspace, centred (= mean)": merge(states, "subspace", base=base, rank=rank, energy=None, center=True,
                                            keys=backbone),
    }
    results = {}
    for name, sd in [("each fine-tuned model (upper bound)", None), ("base backbone (lower bound)", base), *merged.items()]:
        accs = []
        for state, task in zip(states, tasks):
            _, test = task_data(zoo, task)
            model = zoo.model(zoo.base)
            full = dict(state) if sd is None else {**state, **{k: sd[k] for k in backbone}}
            model.load_state_dict(full)
            accs.append(accuracy(model, test))
        results[name] = {"mean_accuracy": sum(accs) / len(accs), "min_accuracy": min(accs), "per_task": accs}
    return results


def projection(zoo: Zoo, subspaces: Dict[str, Subspace], rank: int, task: int, steps: int, lr: float,
               log_dir=None) -> List[Dict]:
    """Fine-tuning on a held-out task with gradients unprojected, projected onto the zoo's subspace,
    and onto its complement (AdamW, steps constrained with ``attach``), tracker on."""
    train_data, test_data = task_data(zoo, task)
    b = bases(subspaces, rank)
    runs = []
    for method in ("unprojected", "projected", "complement"):
        torch.manual_seed(task)
        model = zoo.model(zoo.base)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        proj = None
        if method != "unprojected":
            proj = GradientProjector(model, b, complement=(method == "complement")).attach(opt)
        csv = None if log_dir is None else f"{log_dir}/tracker-{method}.csv"
        tracker = ConvergenceTracker(model, b, every=10, window=8, csv=csv, seed=task)
        last = {}

        def after_step():
            nonlocal last
            last = tracker.step() or last

        start = time.perf_counter()
        train(model, opt, train_data, steps, zoo.config.batch, torch.Generator().manual_seed(2000 + task), after_step)
        seconds = (time.perf_counter() - start) / steps
        tracker.close()
        if proj is not None:
            proj.remove()
        runs.append({"method": method, "accuracy": accuracy(model, test_data), "ms_per_step": 1e3 * seconds,
                     "update_energy": last.get("mean/update_energy", float("nan")),
                     "grad_energy": last.get("mean/grad_energy", float("nan")),
                     "max_angle_rad": last.get("mean/max_angle", float("nan"))})
    return runs


def compression(zoo: Zoo, ranks: Sequence[int]) -> List[Dict]:
    """The analysis zoo stored as mean + bases + coefficients: bytes ratio and accuracy kept."""
    states = [zoo.load(p) for p in zoo.finetuned]
    tests = [task_data(zoo, t)[1] for t in zoo.finetuned_tasks]
    original = [accuracy(zoo.model(p), t) for p, t in zip(zoo.finetuned, tests)]
    rows = []
    for k in ranks:
        z = compress(states, rank=k, keys=list(LAYERS))
        accs = []
        for i, test in enumerate(tests):
            m = zoo.model(zoo.base)
            m.load_state_dict(z.decompress(i))
            accs.append(accuracy(m, test))
        rows.append({"rank": k, "ratio": z.ratio(), "bytes": z.nbytes(), "original_bytes": z.original_nbytes(),
                     "accuracy": sum(accs) / len(accs), "original_accuracy": sum(original) / len(original)})
    return rows
