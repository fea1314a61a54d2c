"""SubspaceAdamW: identity bases reproduce torch.optim.AdamW, rotated bases reproduce Adam in
rotated coordinates, rank-k bases keep k × l state and updates in the subspace, GradientSubspace
bases follow the gradient, state_dict round-trips (weights_only) and resumes bit for bit, and bad
input fails at construction."""
import copy
import io

import pytest
import torch

import unisub
import unisub.optim
from unisub.optim import GradientSubspace, SubspaceAdamW

STEPS = 20


def orthonormal(rows, cols, gen, dtype=torch.float32):
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0].to(dtype)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


class Net(torch.nn.Module):
    """A linear layer, a conv layer (kernel read as 6 × 3·3·3) and a second, independent linear
    head whose loss term does not depend on the others (so its gradients do not either)."""

    def __init__(self, gen, dtype=torch.float32):
        super().__init__()
        self.lin = torch.nn.Linear(8, 12, dtype=dtype)
        self.conv = torch.nn.Conv2d(3, 6, 3, dtype=dtype)
        self.head = torch.nn.Linear(8, 5, dtype=dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)

    def loss(self, x, img):
        a = torch.tanh(self.lin(x)).square().sum() + torch.sin(self.conv(img)).sum()
        return a + torch.cos(self.head(x)).sum()


def data(gen, dtype=torch.float32):
    return (torch.randn(16, 8, generator=gen, dtype=torch.float64).to(dtype),
            torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64).to(dtype))


def train(model, opt, x, img, steps=STEPS):
    for _ in range(steps):
        opt.zero_grad()
        model.loss(x, img).backward()
        opt.step()


def test_no_subspaces_is_torch_adamw_bit_for_bit(gen):
    model = Net(gen)
    ref = copy.deepcopy(model)
    x, img = data(gen)
    train(model, SubspaceAdamW(model, {}, lr=3e-2, weight_decay=0.1), x, img)
    train(ref, torch.optim.AdamW(ref.parameters(), lr=3e-2, weight_decay=0.1, foreach=False), x, img)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("sides", ["both", "out", "in"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_bases_reproduce_adamw(gen, sides, dtype):
    model = Net(gen, dtype)
    ref = copy.deepcopy(model)
    x, img = data(gen, dtype)
    subspaces = {}
    for name in ("lin.weight", "conv.weight"):
        m, n = unisub.mapping.matrix_shape(model.get_parameter(name))
        subspaces[name] = (torch.eye(m, dtype=dtype) if sides in ("both", "out") else None,
                           torch.eye(n, dtype=dtype) if sides in ("both", "in") else None)
    opt = SubspaceAdamW(model.named_parameters(), subspaces, lr=3e-2, weight_decay=0.1)
    start = copy.deepcopy(model)
    train(model, opt, x, img)
    train(ref, torch.optim.AdamW(ref.parameters(), lr=3e-2, weight_decay=0.1, foreach=False), x, img)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.dtype == dtype
        assert rel(p, q) <= 1e-6, n
        assert rel(p, start.get_parameter(n)) > 1e-2, n  # the parameters did move
    assert opt.state[model.lin.weight]["exp_avg"].dtype == dtype


def adam_in_coordinates(W0, grad_fn, U, V, lr, betas, eps, wd, steps):
    """Reference, float64, written from the formulas: Adam on C = Uᵀ G V, update U Δ Vᵀ."""
    W = W0.double().clone()
    U = U.double() if U is not None else torch.eye(W.shape[0], dtype=torch.float64)
    V = V.double() if V is not None else torch.eye(W.shape[1], dtype=torch.float64)
    m = torch.zeros(U.shape[1], V.shape[1], dtype=torch.float64)
    v = torch.zeros_like(m)
    for t in range(1, steps + 1):
        C = U.T @ grad_fn(W) @ V
        W = W * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * C
        v = betas[1] * v + (1 - betas[1]) * C * C
        mhat, vhat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        W = W - lr * U @ (mhat / (vhat.sqrt() + eps)) @ V.T
    return W


def matrix_problem(gen, m=12, n=9):
    X = torch.randn(32, n, generator=gen, dtype=torch.float64)
    Y = torch.randn(32, m, generator=gen, dtype=torch.float64)

    def loss(W):
        return (torch.tanh(X.to(W.dtype) @ W.T) - Y.to(W.dtype)).square().sum()

    def grad_fn(W):
        W = W.detach().requires_grad_(True)
        loss(W).backward()
        return W.grad

    return torch.randn(m, n, generator=gen, dtype=torch.float64) * 0.3, loss, grad_fn


def run_matrix(W0, loss, subspace, dtype, steps=STEPS, **kw):
    W = torch.nn.Parameter(W0.clone().to(dtype))
    opt = SubspaceAdamW([("W", W)], {"W": subspace} if subspace is not None else {}, **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss(W).backward()
        opt.step()
    return W.detach(), opt


@pytest.mark.parametrize("sides", ["both", "out", "in"])
def test_rotated_full_rank_bases_are_adam_in_rotated_coordinates(gen, sides):
    # Adam normalises elementwise, which is not rotation invariant: a full-rank rotated basis is
    # a different optimizer than AdamW (checked below), namely Adam run on C = Uᵀ G V.
    W0, loss, grad_fn = matrix_problem(gen)
    m, n = W0.shape
    U = orthonormal(m, m, gen, torch.float64) if sides in ("both", "out") else None
    V = orthonormal(n, n, gen, torch.float64) if sides in ("both", "in") else None
    kw = dict(lr=2e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    expected = adam_in_coordinates(W0, grad_fn, U, V, kw["lr"], kw["betas"], kw["eps"], kw["weight_decay"], STEPS)
    W64, _ = run_matrix(W0, loss, (U, V), torch.float64, **kw)
    assert rel(W64, expected) <= 1e-10
    W32, _ = run_matrix(W0, loss, (U, V), torch.float32, **kw)
    assert rel(W32, expected) <= 1e-5  # float32 run against the float64 formulas
    Wadam, _ = run_matrix(W0, loss, None, torch.float64, **kw)
    assert rel(W64 - W0, Wadam - W0) > 1e-3  # not AdamW


@pytest.mark.parametrize("k,l", [(4, 3), (4, None), (None, 3)])
def test_rank_k_state_shape_and_updates_in_span(gen, k, l):  # noqa: E741
    model = Net(gen)
    x, img = data(gen)
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    bases = {}
    for name in ("lin.weight", "conv.weight"):
        m, n = unisub.mapping.matrix_shape(model.get_parameter(name))
        bases[name] = (orthonormal(m, k, gen) if k else None, orthonormal(n, l, gen) if l else None)
    opt = SubspaceAdamW(model, bases, lr=3e-2, weight_decay=0.0)
    train(model, opt, x, img)
    for name, (U, V) in bases.items():
        p = model.get_parameter(name)
        m, n = unisub.mapping.matrix_shape(p)
        state = opt.state[p]
        assert tuple(state["exp_avg"].shape) == (k or m, l or n)
        assert tuple(state["exp_avg_sq"].shape) == (k or m, l or n)
        D = (p.detach() - W0[name]).reshape(m, n).double()
        P = D
        if U is not None:
            P = U.double() @ (U.double().T @ P)
        if V is not None:
            P = (P @ V.double()) @ V.double().T
        assert float(D.norm()) > 1e-2
        assert rel(P, D) <= 1e-6, name
    # unmapped parameters keep full-size moments
    assert opt.state[model.lin.bias]["exp_avg"].shape == model.lin.bias.shape


def test_rank_k_matches_formulas(gen):
    W0, loss, grad_fn = matrix_problem(gen)
    U, V = orthonormal(12, 5, gen, torch.float64), orthonormal(9, 4, gen, torch.float64)
    kw = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    W, opt = run_matrix(W0, loss, (U, V), torch.float64, **kw)
    assert rel(W, adam_in_coordinates(W0, grad_fn, U, V, kw["lr"], kw["betas"], kw["eps"],
                                      kw["weight_decay"], STEPS)) <= 1e-10


def test_parameter_without_subspace_is_plain_adamw_bit_for_bit(gen):
    model = Net(gen)
    ref = copy.deepcopy(model)
    x, img = data(gen)
    bases = {"lin.weight": (orthonormal(12, 3, gen), orthonormal(8, 2, gen)),
             "conv.weight": (None, orthonormal(27, 5, gen))}
    train(model, SubspaceAdamW(model, bases, lr=3e-2), x, img)
    train(ref, torch.optim.AdamW(ref.parameters(), lr=3e-2, foreach=False), x, img)
    # the head's loss term does not involve the mapped layers, so its gradients are the same
    for name in ("head.weight", "head.bias"):
        assert torch.equal(model.get_parameter(name), ref.get_parameter(name)), name
    assert not torch.equal(model.lin.weight, ref.lin.weight)


def test_grad_none_is_skipped(gen):
    model = Net(gen)
    x, img = data(gen)
    opt = SubspaceAdamW(model, {"lin.weight": (orthonormal(12, 3, gen), None)}, lr=1e-2, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    torch.tanh(model.head(x)).sum().backward()  # only the head gets gradients
    opt.step()
    for name in ("lin.weight", "lin.bias", "conv.weight", "conv.bias"):
        assert model.get_parameter(name).grad is None
        assert torch.equal(model.get_parameter(name), before[name]), name  # no weight decay either
        assert len(opt.state[model.get_parameter(name)]) == 0
    assert not torch.equal(model.head.weight, before["head.weight"])
    # a later step with gradients initialises the skipped parameters' state then
    train(model, opt, x, img, steps=2)
    assert float(opt.state[model.lin.weight]["step"]) == 2 and float(opt.state[model.head.weight]["step"]) == 3


def test_bfloat16_parameters_keep_float32_moments(gen):
    W0, loss, grad_fn = matrix_problem(gen)
    U = orthonormal(12, 4, gen)
    kw = dict(lr=1e-2, weight_decay=0.1)
    W = torch.nn.Parameter(W0.to(torch.bfloat16))
    b = torch.nn.Parameter(torch.randn(12, generator=gen).to(torch.bfloat16))
    opt = SubspaceAdamW([("W", W), ("b", b)], {"W": (U, None)}, **kw)
    for _ in range(5):
        opt.zero_grad()
        (loss(W.float()) + (b.float() * torch.arange(12.0)).sin().sum()).backward()
        opt.step()
    assert W.dtype == torch.bfloat16 and b.dtype == torch.bfloat16
    for p, shape in ((W, (4, 9)), (b, (12,))):
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][key].dtype == torch.float32
            assert tuple(opt.state[p][key].shape) == shape
    # the same run in float32 from the bf16 start: agreement to bfloat16's resolution (each step
    # rounds W to 2⁻⁹ relative; 30 seeds gave at most 1.2e-2 after 5 steps, the updates ~0.15)
    W32, _ = run_matrix(W0.to(torch.bfloat16).double(), loss, (U, None), torch.float32, steps=5, **kw)
    assert rel(W.float(), W32) <= 3e-2
    # state_dict keeps float32 moments for bfloat16 parameters (torch's loader would cast them)
    opt2 = SubspaceAdamW([("W", W), ("b", b)], {"W": (U, None)}, **kw)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[W]["exp_avg"].dtype == torch.float32
    assert torch.equal(opt2.state[W]["exp_avg"], opt.state[W]["exp_avg"])


# --- GradientSubspace --------------------------------------------------------------------------

def test_gradient_subspace_basis_is_svd_of_gradient(gen):
    W0, loss, _ = matrix_problem(gen)
    W = torch.nn.Parameter(W0.float())
    opt = SubspaceAdamW([("W", W)], {"W": GradientSubspace(rank=3, side="both", every=4)}, lr=1e-2)
    seen = []
    for t in range(9):
        opt.zero_grad()
        loss(W).backward()
        G = W.grad.detach().clone()
        old = opt.bases("W")
        opt.step()
        U, V = opt.bases("W")
        assert U.shape == (12, 3) and V.shape == (9, 3)
        assert opt.state[W]["exp_avg"].shape == (3, 3)
        if t % 4 == 0:  # steps 0, 4, 8 recompute the basis from the gradient they see
            Us, _, Vh = unisub.svd(G, rank=3)
            assert torch.allclose(U, Us, atol=1e-5) and torch.allclose(V, Vh.T, atol=1e-5)
            seen.append(U.clone())
        else:
            assert old[0] is U and old[1] is V
    assert (seen[0] - seen[1]).abs().max() > 1e-3  # the basis did change


def test_gradient_subspace_sides_and_moment_rotation(gen):
    W0, loss, _ = matrix_problem(gen)
    for side, shape in (("out", (4, 9)), ("in", (12, 4))):
        W = torch.nn.Parameter(W0.clone())  # float64: the rotation is checked to 1e-12
        beta1, beta2 = 0.9, 0.99
        opt = SubspaceAdamW([("W", W)], {"W": GradientSubspace(rank=4, side=side, every=1000)},
                            lr=5e-2, betas=(beta1, beta2), weight_decay=0.0)
        for t in range(4):
            opt.zero_grad()
            loss(W).backward()
            if t == 3:
                opt.refresh("W")
                U0, V0 = opt.bases("W")
                m0, v0 = (opt.state[W][k].clone() for k in ("exp_avg", "exp_avg_sq"))
                G = W.grad.clone()
            opt.step()
        U1, V1 = opt.bases("W")
        assert opt.state[W]["exp_avg"].shape == shape
        Us, _, Vh = unisub.svd(G, rank=4)
        if side == "out":
            assert V1 is None and torch.allclose(U1, Us, atol=1e-10)
            R = U1.T @ U0
            m_exp = beta1 * (R @ m0) + (1 - beta1) * (U1.T @ G)
            v_exp = beta2 * (R.square() @ v0) + (1 - beta2) * (U1.T @ G).square()
        else:
            assert U1 is None and torch.allclose(V1, Vh.T, atol=1e-10)
            R = V1.T @ V0
            m_exp = beta1 * (m0 @ R.T) + (1 - beta1) * (G @ V1)
            v_exp = beta2 * (v0 @ R.square().T) + (1 - beta2) * (G @ V1).square()
        assert rel(opt.state[W]["exp_avg"], m_exp) <= 1e-12
        assert rel(opt.state[W]["exp_avg_sq"], v_exp) <= 1e-12
        assert (opt.state[W]["exp_avg_sq"] >= 0).all()


def test_refresh_errors(gen):
    model = Net(gen)
    opt = SubspaceAdamW(model, {"lin.weight": GradientSubspace(2), "conv.weight": (orthonormal(6, 2, gen), None)})
    opt.refresh()  # before any step: nothing to do, the first step computes the bases
    with pytest.raises(ValueError, match="not mapped to a GradientSubspace"):
        opt.refresh("conv.weight")
    with pytest.raises(KeyError, match="did you mean 'lin.weight'"):
        opt.refresh("lin.weigth")


# --- state_dict and resuming -------------------------------------------------------------------

def make_resume_setup(gen):
    model = Net(gen)
    model.low = torch.nn.Linear(8, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        model.low.weight.copy_(torch.randn(4, 8, generator=gen))
    subspaces = {"lin.weight": GradientSubspace(rank=3, side="both", every=3),
                 "conv.weight": (orthonormal(6, 4, gen), orthonormal(27, 5, gen)),
                 "head.weight": GradientSubspace(rank=2, side="in", every=4),
                 "low.weight": (orthonormal(4, 2, gen), None)}
    return model, subspaces


def loss_with_half(model, x, img):
    return model.loss(x, img) + torch.tanh(model.low(x.to(torch.bfloat16)).float()).sum()


def save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("split", [7, 9])
def test_resume_is_bit_exact(gen, split):
    model, subspaces = make_resume_setup(gen)
    x, img = data(gen)
    make_opt = lambda m: SubspaceAdamW(m, subspaces, lr=2e-2, weight_decay=0.1)  # noqa: E731

    def steps(model, opt, start, stop):
        for t in range(start, stop):
            opt.zero_grad()
            loss_with_half(model, x, img).backward()
            if t == 5:
                opt.refresh("head.weight")
            opt.step()

    opt = make_opt(model)
    steps(model, opt, 0, split)
    if split == 7:
        opt.refresh("lin.weight")  # a pending refresh is part of the saved state too
    checkpoint = save_load({"model": model.state_dict(), "optim": opt.state_dict()})
    steps(model, opt, split, STEPS)

    resumed, _ = make_resume_setup(torch.Generator().manual_seed(1))  # other initial weights
    resumed.load_state_dict(checkpoint["model"])
    opt2 = make_opt(resumed)
    opt2.load_state_dict(checkpoint["optim"])
    steps(resumed, opt2, split, STEPS)
    for (n, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert p.dtype == q.dtype and torch.equal(p, q), n
    for p, q in zip(model.parameters(), resumed.parameters()):
        for key, value in opt.state[p].items():
            other = opt2.state[q][key]
            assert (torch.equal(value, other) and value.dtype == other.dtype) if torch.is_tensor(value) \
                else value == other, key


def test_state_dict_holds_tensors_and_plain_values_only(gen):
    model, subspaces = make_resume_setup(gen)
    x, img = data(gen)
    opt = SubspaceAdamW(model, subspaces)
    loss_with_half(model, x, img).backward()
    opt.step()
    sd = opt.state_dict()

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, (str, int)) and plain(x) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (torch.Tensor, bool, int, float, str))

    assert plain(sd)
    loaded = save_load(sd)
    assert loaded["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
    lin_state = loaded["state"][0]
    assert set(lin_state) == {"step", "exp_avg", "exp_avg_sq", "U", "V", "refresh_pending"}


def test_load_state_dict_from_other_subspaces_fails_clearly(gen):
    model, subspaces = make_resume_setup(gen)
    x, img = data(gen)
    opt = SubspaceAdamW(model, subspaces)
    loss_with_half(model, x, img).backward()
    opt.step()
    other = dict(subspaces, **{"conv.weight": (orthonormal(6, 3, gen), None)})
    with pytest.raises(ValueError, match=r"'conv.weight' has exp_avg of shape \(4, 5\).*keeps \(3, 27\)"):
        SubspaceAdamW(model, other).load_state_dict(opt.state_dict())
    renamed = [(n.replace("head", "out"), p) for n, p in model.named_parameters()]
    with pytest.raises(ValueError, match="named 'head.weight' where this optimizer has 'out.weight'"):
        SubspaceAdamW(renamed, {}).load_state_dict(opt.state_dict())


def test_lr_scheduler_and_param_groups(gen):
    model = Net(gen)
    opt = SubspaceAdamW([{"params": model.lin.named_parameters(prefix="lin"), "lr": 0.0},
                         {"params": model.conv.named_parameters(prefix="conv")}],
                        {"conv.weight": (orthonormal(6, 2, gen), None)}, lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, img = data(gen)
    before = model.lin.weight.detach().clone()
    opt.zero_grad()
    (model.lin(x).sum() + model.conv(img).sum()).backward()
    opt.step()
    sched.step()
    assert torch.equal(model.lin.weight, before)  # lr 0 in that group
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-3)
    # a group added later gets plain AdamW
    ref = copy.deepcopy(model.head)
    opt.add_param_group({"params": list(model.head.named_parameters(prefix="head")), "lr": 1e-2})
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0, foreach=False)
    for o, head in ((opt, model.head), (ref_opt, ref)):
        o.zero_grad()
        torch.sin(head(x)).sum().backward()
        o.step()
    assert torch.equal(model.head.weight, ref.weight) and torch.equal(model.head.bias, ref.bias)


# --- bad input fails at construction ----------------------------------------------------------

def test_construction_errors(gen):
    model = Net(gen)
    U = orthonormal(12, 3, gen)
    with pytest.raises(TypeError, match="needs parameter names"):
        SubspaceAdamW(model.parameters(), {})
    with pytest.raises(TypeError, match="needs parameter names.*bare tensor"):
        SubspaceAdamW(model.lin.weight, {})
    with pytest.raises(KeyError, match="does not have.*did you mean 'lin.weight'"):
        SubspaceAdamW(model, {"lin.wieght": (U, None)})
    with pytest.raises(KeyError, match="does not have.*'nope.weight'"):
        SubspaceAdamW(model, {"nope.weight": GradientSubspace(2)})
    with pytest.raises(ValueError, match="basis U \\(out\\) has 12 rows but the parameter has 6"):
        SubspaceAdamW(model, {"conv.weight": (U, None)})
    with pytest.raises(ValueError, match="orthonormal"):
        SubspaceAdamW(model, {"lin.weight": (2 * U, None)})
    with pytest.raises(ValueError, match="shape \\(12,\\); subspaces act on matrices"):
        SubspaceAdamW(model, {"lin.bias": GradientSubspace(2)})
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 8\]"):
        SubspaceAdamW(model, {"lin.weight": GradientSubspace(9)})
    with pytest.raises(ValueError, match="rank must be"):
        SubspaceAdamW(model, {"lin.weight": GradientSubspace(0)})
    with pytest.raises(ValueError, match="side must be one of"):
        SubspaceAdamW(model, {"lin.weight": GradientSubspace(2, side="left")})
    with pytest.raises(ValueError, match="every must be a positive integer"):
        SubspaceAdamW(model, {"lin.weight": GradientSubspace(2, every=0)})
    with pytest.raises(ValueError, match="betas"):
        SubspaceAdamW(model, {}, betas=(0.9, 1.0))
    # a param group's own values used to be taken unchecked (betas (2, 0.5): a silently wrong step)
    with pytest.raises(ValueError, match=r"param group 0: lr must be a non-negative number, got -0.1"):
        SubspaceAdamW([{"params": list(model.named_parameters()), "lr": -0.1}], {})
    with pytest.raises(ValueError, match=r"param group 1: betas must be two numbers in \[0, 1\), got \(2.0, 0.5\)"):
        SubspaceAdamW([{"params": [("lin.weight", model.lin.weight)]},
                       {"params": [("lin.bias", model.lin.bias)], "betas": (2.0, 0.5)}], {})
    opt = SubspaceAdamW([{"params": [("lin.weight", model.lin.weight)]}], {})
    with pytest.raises(ValueError, match=r"param group 1: weight_decay must be a non-negative number, got -1"):
        opt.add_param_group({"params": [("lin.bias", model.lin.bias)], "weight_decay": -1})
    assert len(opt.param_groups) == 1
    model.register_parameter("counts", torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int64), requires_grad=False))
    with pytest.raises(TypeError, match="torch.int64; only floating-point"):
        SubspaceAdamW(model, {"counts": (orthonormal(4, 2, gen), None)})
    with pytest.raises(TypeError, match="torch.int64; only floating-point"):
        SubspaceAdamW(model, {"counts": GradientSubspace(2)})
