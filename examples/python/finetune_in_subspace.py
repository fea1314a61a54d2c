"""Fine-tune inside a universal subspace, on data that ships with scikit-learn (the 8×8 digits).

1. Pre-train a small MLP on the digits.
2. Build a zoo: fine-tune it on ``--zoo`` tasks, each a different relabelling of the ten digits
   (task t asks for π_t(digit)), as a LoRA/ViT zoo shares a base model and differs by task.
3. Fit per-layer universal subspaces of the zoo's weights with ``SubspaceAccumulator``.
4. Fine-tune the base on a held-out relabelling five ways, each with a ``ConvergenceTracker`` on:
   full fine-tuning (AdamW), gradients projected onto the subspace (``GradientProjector`` with the
   AdamW step constrained), projected onto its complement, coefficient-only training
   (``unisub.nn.train_coefficients``), and ``unisub.optim.SubspaceAdamW``.
5. Print test accuracy, trainable parameters, optimizer-state bytes (SubspaceAdamW: moments plus
   the bases it holds), time per step (tracker included), the share of the run's update inside the
   subspace and the tracker's mean largest principal angle between the run's recent updates and
   the subspace.

    python examples/python/finetune_in_subspace.py [--zoo 12] [--rank 8] [--steps 300]
"""
import argparse
import time

import torch

import unisub
from unisub.demo import zoo as demo_zoo  # the digits data and the small-MLP training loop the demo uses
from unisub.nn import train_coefficients
from unisub.optim import SubspaceAdamW, basis_bytes, state_bytes
from unisub.tracker import ConvergenceTracker

LAYERS = ["0.weight", "2.weight", "4.weight"]
_START = time.perf_counter()


def stage(text):
    """A progress line with the time since the start (each stage takes seconds to a minute)."""
    print(f"[{time.perf_counter() - _START:6.1f} s] {text}", flush=True)


def make_mlp():
    return demo_zoo.make_mlp(hidden=128)


def fit(model, opt, X, y, steps, gen, tracker=None):
    """Seconds per step of cross-entropy training (batch 64), the tracker stepped after each update."""
    return demo_zoo.train(model, opt, (X, y), steps, 64, gen, after_step=None if tracker is None else tracker.step)


def accuracy(model, X, y):
    return demo_zoo.accuracy(model, (X, y))


def relabel(y, perm):
    return perm[y]


def build_zoo(base, train, count, steps, seed):
    """``count`` fine-tunes of ``base`` on random relabellings; returns their state dicts."""
    zoo = []
    for t in range(count):
        gen = torch.Generator().manual_seed(seed + 1000 + t)
        perm = torch.randperm(10, generator=gen)
        model = make_mlp()
        model.load_state_dict(base.state_dict())
        fit(model, torch.optim.AdamW(model.parameters(), lr=3e-3), train[0], relabel(train[1], perm), steps, gen)
        zoo.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        stage(f"  zoo model {t + 1}/{count} fine-tuned")
    return zoo


def fit_subspaces(zoo, rank):
    """Per-layer universal subspaces of the zoo (centred; rank ``rank`` on both modes)."""
    subspaces = {}
    for name in LAYERS:
        acc = unisub.SubspaceAccumulator(modes=("out", "in"), center=True)
        for sd in zoo:
            acc.update(sd[name][None].double())
        subspaces[name] = acc.finalize(slot=name, rank=rank)
    return subspaces


def update_energy(model, base, subspaces):
    """Mean over the layers of ‖P(W − W₀)‖² / ‖W − W₀‖²: the share of the run's update in the subspace."""
    weights, start = dict(model.named_parameters()), base.state_dict()
    shares = []
    for name, s in subspaces.items():
        W = weights.get(name)
        if W is None:  # parametrized: model.0.weight is computed, not stored
            W = model.get_submodule(name.rsplit(".", 1)[0]).weight
        delta = (W.detach() - start[name]).double()
        shares.append(float(unisub.subspace_energy(delta, s.bases["out"], s.bases["in"])))
    return sum(shares) / len(shares)


def run(method, base, subspaces, train, test, steps, seed, lr):
    gen = torch.Generator().manual_seed(seed)
    model = make_mlp()
    model.load_state_dict(base.state_dict())
    projector = None
    if method == "full":
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=lr)
    elif method in ("projected", "complement"):
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=lr)
        projector = unisub.GradientProjector(model, subspaces, complement=(method == "complement")).attach(opt)
    elif method == "coefficients":
        params = train_coefficients(model, subspaces, keep_residual=True)
        # Adam moves each coefficient by ~lr per step: k·l coefficients move W by far less than
        # m·n free entries would, so subspace methods want a larger learning rate (as GaLore's scale).
        opt = torch.optim.AdamW(params, lr=lr * 10, weight_decay=0.0)
    elif method == "SubspaceAdamW":
        params = list(model.parameters())
        opt = SubspaceAdamW(model, subspaces, lr=lr * 10)
    else:
        raise ValueError(method)
    # The tracker follows the weights by name; coefficient-only training renames them (parametrized).
    tracker = ConvergenceTracker(model, subspaces, every=10, window=8) if method != "coefficients" else None
    per_step = fit(model, opt, train[0], train[1], steps, gen, tracker)
    angle = float("nan")
    if tracker is not None:
        angle = tracker.step(10 * steps).get("mean/max_angle", float("nan"))  # a tracked step: the final state
        tracker.close()
    if projector is not None:
        projector.remove()
    energy = update_energy(model, base, subspaces)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return dict(method=method, accuracy=accuracy(model, *test), trainable=trainable, state=state_bytes(opt) + (basis_bytes(opt) if isinstance(opt, SubspaceAdamW) else 0),
                ms=1e3 * per_step, energy=energy, angle=angle)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=int, default=12, help="fine-tuned models in the zoo")
    ap.add_argument("--rank", type=int, default=8, help="subspace rank per mode")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps per run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    train, test = demo_zoo.digits(args.seed)
    base = make_mlp()
    stage("pre-training the base model (600 steps)")
    fit(base, torch.optim.AdamW(base.parameters(), lr=3e-3), *train, 600, torch.Generator().manual_seed(args.seed))
    print(f"base model: test accuracy {accuracy(base, *test):.3f} on the digits")
    stage(f"building the zoo: {args.zoo} fine-tunes of the base, {args.steps} steps each")
    zoo = build_zoo(base, train, args.zoo, args.steps, args.seed)
    stage(f"fitting rank-{args.rank} subspaces of layers {', '.join(LAYERS)}")
    subspaces = fit_subspaces(zoo, args.rank)
    for name, s in subspaces.items():
        evr = s.explained_variance_ratio("out")[:args.rank].sum()
        print(f"  {name}: {s!r}, out-mode EVR of the top {args.rank}: {evr:.3f}")
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(args.seed + 7))
    task_train, task_test = (train[0], relabel(train[1], perm)), (test[0], relabel(test[1], perm))
    print(f"held-out task: digits relabelled by {perm.tolist()}; base accuracy {accuracy(base, *task_test):.3f}")
    rows = []
    for m in ("full", "projected", "complement", "coefficients", "SubspaceAdamW"):
        stage(f"fine-tuning on the held-out task: {m} ({args.steps} steps)")
        rows.append(run(m, base, subspaces, task_train, task_test, args.steps, args.seed + 1, 3e-3))
    print(f"{'method':<15}{'accuracy':>10}{'trainable':>11}{'opt state':>12}{'ms/step':>9}{'update in S':>13}{'angle':>8}")
    for r in rows:
        print(f"{r['method']:<15}{r['accuracy']:>10.3f}{r['trainable']:>11,}{r['state']:>12,}{r['ms']:>9.2f}"
              f"{r['energy']:>13.3f}{r['angle']:>8.2f}")
    return rows


if __name__ == "__main__":
    main()
