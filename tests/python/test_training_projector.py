"""GradientProjector: updates stay in (or orthogonal to) the subspace for SGD and AdamW, with
gradient accumulation, AMP dtypes, torch.compile and DDP; bad mappings fail at construction."""
import os
import sys
import subprocess
import textwrap

import pytest
import torch

import unisub
from unisub import GradientProjector


def orthonormal(rows, cols, gen, dtype=torch.float32):
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0].to(dtype)


def make_model(gen, dtype=torch.float32):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).to(dtype)


def residual_outside(delta, U, V, complement=False):
    """‖(I − P) Δ‖ / ‖Δ‖ in float64, P = U Uᵀ · V Vᵀ (or ‖P Δ‖ / ‖Δ‖ for the complement)."""
    D = delta.double().reshape(delta.shape[0], -1)
    P = D
    if U is not None:
        P = U.double() @ (U.double().T @ P)
    if V is not None:
        P = (P @ V.double()) @ V.double().T
    outside = P if complement else D - P
    return float(outside.norm() / D.norm())


def rounding_allowance(W, delta):
    """Storing W in float32 after each step rounds it by ≤ ε·|W| per entry: that part of W − W₀
    is outside any subspace and is no fault of the projection. Allow 4 such roundings."""
    eps = torch.finfo(W.dtype).eps
    return 4 * eps * float(W.detach().double().norm() / delta.double().norm())


def train(model, steps, opt, gen, accumulate=1, loss_scale=1.0):
    for _ in range(steps):
        for _ in range(accumulate):
            x = torch.randn(32, 12, generator=gen).to(next(model.parameters()).dtype)
            y = torch.randn(32, 3, generator=gen).to(x.dtype)
            (loss_scale * ((model(x) - y) ** 2).mean()).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("complement", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_updates_stay_in_the_subspace(optimizer, complement, gen):
    model = make_model(gen)
    U0, V0, U2 = orthonormal(16, 5, gen), orthonormal(12, 4, gen), orthonormal(3, 2, gen)
    subspaces = {"0.weight": (U0, V0), "4.weight": (U2, None)}  # two-sided, left-only; 2.weight unmapped
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    proj = GradientProjector(model, subspaces, complement=complement)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
        proj.attach(opt)  # Adam's steps and weight decay leave any subspace: constrain the step
    train(model, 25, opt, gen, accumulate=2)
    params = dict(model.named_parameters())
    for name, (U, V) in subspaces.items():
        delta = params[name].detach() - W0[name]
        bound = max(1e-6, rounding_allowance(params[name], delta))
        assert residual_outside(delta, U, V, complement) <= bound, name
    # unmapped parameters trained freely (not frozen, not projected)
    assert not torch.equal(params["2.weight"], W0["2.weight"])
    proj.remove()


def test_unmapped_parameters_untouched_and_gradients_match_a_reference(gen):
    model = make_model(gen, torch.float64)
    U, V = orthonormal(16, 3, gen, torch.float64), orthonormal(12, 5, gen, torch.float64)
    x, y = torch.randn(20, 12, generator=gen, dtype=torch.float64), torch.randn(20, 3, generator=gen, dtype=torch.float64)
    ((model(x) - y) ** 2).mean().backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with GradientProjector(model, {"0.weight": (U, V)}):
        ((model(x) - y) ** 2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(grads["0.weight"], U @ U.T @ raw["0.weight"] @ V @ V.T, rtol=1e-12, atol=1e-14)
    for n in raw:
        if n != "0.weight":
            assert torch.equal(grads[n], raw[n]), n
    # after remove() (the context exit) gradients are raw again
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    assert torch.equal(model[0].weight.grad, raw["0.weight"])


def test_one_projection_call_per_backward(gen, monkeypatch):
    model = make_model(gen)
    proj = GradientProjector(model, {"0.weight": (orthonormal(16, 2, gen), None), "2.weight": (None, orthonormal(16, 3, gen))})
    calls = []
    real = unisub.projector.project_list_
    monkeypatch.setattr(unisub.projector, "project_list_", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    model(torch.randn(4, 12, generator=gen)).sum().backward()
    assert calls == [2]
    proj.remove()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradients(dtype, gen):
    """AMP-style half-precision gradients: projected in float32, rounded once."""
    model = make_model(gen).to(dtype)
    U = orthonormal(16, 4, gen)
    x = torch.randn(8, 12, generator=gen).to(dtype)
    model(x).float().square().mean().backward()
    raw = model[0].weight.grad.float().clone()
    model.zero_grad()
    with GradientProjector(model, {"0.weight": (U, None)}):
        model(x).float().square().mean().backward()
    expect = (U.double() @ (U.double().T @ raw.double()))
    eps = torch.finfo(dtype).eps
    assert float((model[0].weight.grad.double() - expect).abs().max()) <= eps * float(expect.abs().max()) + 1e-30
    assert model[0].weight.grad.dtype == dtype


def test_overflowed_gradients_are_left_for_the_scaler(gen):
    model = make_model(gen)
    with GradientProjector(model, {"0.weight": (orthonormal(16, 4, gen), None)}):
        model(torch.full((2, 12), float("inf"))).sum().backward()
    assert not torch.isfinite(model[0].weight.grad).all()


def test_compiled_model_fullgraph(gen):
    model = make_model(gen)
    U = orthonormal(16, 3, gen)
    W0 = model[0].weight.detach().clone()
    proj = GradientProjector(model, {"0.weight": (U, None)})
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    train(compiled, 5, opt, gen)
    delta = model[0].weight.detach() - W0
    assert residual_outside(delta, U, None) <= max(1e-6, rounding_allowance(model[0].weight, delta))
    proj.remove()


def test_bad_mappings_fail_at_construction(gen):
    model = make_model(gen)
    with pytest.raises(KeyError, match="did you mean '0.weight'"):
        GradientProjector(model, {"0.weigth": (orthonormal(16, 2, gen), None)})
    with pytest.raises(ValueError, match=r"basis U \(out\) has 12 rows but the parameter has 16"):
        GradientProjector(model, {"0.weight": (orthonormal(12, 2, gen), None)})
    with pytest.raises(ValueError, match="orthonormal columns"):
        GradientProjector(model, {"0.weight": (2 * orthonormal(16, 2, gen), None)})
    with pytest.raises(ValueError, match="subspaces act on matrices"):
        GradientProjector(model, {"0.bias": (orthonormal(16, 2, gen), None)})
    emb = torch.nn.Module()
    emb.register_parameter("counts", torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int64), requires_grad=False))
    with pytest.raises(TypeError, match="only floating-point parameters"):
        GradientProjector(emb, {"counts": (orthonormal(4, 2, gen), None)})
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        GradientProjector([torch.zeros(2, 2)], {})
    with pytest.raises(RuntimeError, match="attach"):
        GradientProjector(model, {}).constrain_weights()


def test_subspace_objects_map_directly(gen):
    X = torch.randn(6, 16, 12, generator=gen, dtype=torch.float64)
    sub = unisub.SubspaceAccumulator().update(X).finalize(slot="0.weight", rank=3)
    model = make_model(gen)
    proj = GradientProjector(model, {"0.weight": sub})
    model(torch.randn(5, 12, generator=gen)).sum().backward()
    U, V = sub.bases["out"], sub.bases["in"]
    g = model[0].weight.grad
    assert residual_outside(g, U, V) <= 1e-6
    proj.remove()


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    import unisub
    rank = int(sys.argv[1]); world = 2
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    U = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    unisub.GradientProjector(ddp, {"0.weight": (U, None)})
    g = torch.Generator().manual_seed(100 + rank)
    x, y = torch.randn(16, 10, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
    ((ddp(x) - y) ** 2).mean().backward()
    torch.save({"grad": model[0].weight.grad, "U": U, "x": x, "y": y}, sys.argv[3] + f".{rank}")
    # both ranks done with gloo before either tears it down: without the barrier a rank exiting
    # while the other's gloo threads still ran aborted once ("terminate called without an active
    # exception") on the loaded 2-core machine
    dist.barrier()
    dist.destroy_process_group()
""")


def test_ddp_projects_after_the_all_reduce(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "rdzv"), str(tmp_path / "out")], env=env)
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    outs = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    # reference: the same model, the mean of both ranks' raw gradients, projected in float64
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    raw = []
    for o in outs:
        model.zero_grad()
        ((model(o["x"]) - o["y"]) ** 2).mean().backward()
        raw.append(model[0].weight.grad.clone())
    U = outs[0]["U"]
    expect = U @ U.T @ ((raw[0] + raw[1]) / 2)
    for o in outs:
        torch.testing.assert_close(o["grad"], expect, rtol=1e-12, atol=1e-14)
