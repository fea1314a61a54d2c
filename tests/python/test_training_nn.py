"""Coefficient-only training (SubspaceLinear, train_coefficients) and LoRA with frozen factor bases
(SubspaceLoRALinear): what trains, what does not, merging, TorchScript and torch.compile."""
import pytest
import torch

import unisub
from unisub.nn import SubspaceLinear, SubspaceLoRALinear, merge, train_coefficients


def orthonormal(rows, cols, gen, dtype=torch.float32):
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0].to(dtype)


def seeded(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))


def project64(W, U, V, mean=None):
    D = W.double() - (0 if mean is None else mean.double())
    P = D if U is None else U.double() @ (U.double().T @ D)
    P = P if V is None else (P @ V.double()) @ V.double().T
    return P + (0 if mean is None else mean.double())


def rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def test_from_linear_keeps_the_function_or_projects_the_weight(gen):
    seeded(gen)
    lin = torch.nn.Linear(20, 12, dtype=torch.float64)
    U, V = orthonormal(12, 4, gen, torch.float64), orthonormal(20, 6, gen, torch.float64)
    x = torch.randn(7, 20, generator=gen, dtype=torch.float64)
    kept = SubspaceLinear.from_linear(lin, (U, V))
    torch.testing.assert_close(kept(x), lin(x), rtol=1e-13, atol=1e-13)
    assert kept.C.shape == (4, 6) and [n for n, p in kept.named_parameters() if p.requires_grad] == ["C"]
    dropped = SubspaceLinear.from_linear(lin, (U, V), keep_residual=False)
    assert rel(dropped.weight(), project64(lin.weight, U, V)) <= 1e-13
    # a Subspace's mean becomes the offset: W starts at μ + U Uᵀ (W − μ) V Vᵀ
    stack = torch.randn(5, 12, 20, generator=gen, dtype=torch.float64)
    sub = unisub.SubspaceAccumulator().update(stack).finalize(slot="w", rank=3)
    via_sub = SubspaceLinear.from_linear(lin, sub, keep_residual=False)
    assert rel(via_sub.weight(), project64(lin.weight, sub.bases["out"], sub.bases["in"], sub.mean)) <= 1e-13
    assert rel(SubspaceLinear.from_linear(lin, {"in": V}, keep_residual=False).weight(), project64(lin.weight, None, V)) <= 1e-13


def test_coefficient_gradient_is_the_projected_weight_gradient(gen):
    U, V = orthonormal(9, 3, gen, torch.float64), orthonormal(7, 2, gen, torch.float64)
    layer = SubspaceLinear(torch.randn(9, 7, generator=gen, dtype=torch.float64), U, V,
                           torch.randn(3, 2, generator=gen, dtype=torch.float64))
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda C, x: torch.nn.functional.linear(x, layer.offset + U @ C @ V.T), (layer.C, x))
    layer(x).square().sum().backward()
    W = layer.weight().detach().requires_grad_(True)
    torch.nn.functional.linear(x.detach(), W).square().sum().backward()
    torch.testing.assert_close(layer.C.grad, U.T @ W.grad @ V, rtol=1e-12, atol=1e-12)


def make_model(gen):
    seeded(gen)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(),
                               torch.nn.Unflatten(1, (1, 16)), torch.nn.Conv1d(1, 3, 5), torch.nn.Flatten(),
                               torch.nn.Linear(36, 4))


@pytest.mark.parametrize("keep_residual", [True, False])
def test_only_coefficients_change_and_merge_matches(keep_residual, gen):
    model = make_model(gen)
    x, y = torch.randn(64, 10, generator=gen), torch.randn(64, 4, generator=gen)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    out_before = model(x)
    U0, V0 = orthonormal(16, 5, gen), orthonormal(10, 4, gen)
    Vc = orthonormal(5, 2, gen)  # conv kernel 3 × (1·5): right basis only
    U5 = orthonormal(4, 2, gen)
    subspaces = {"0.weight": (U0, V0), "3.weight": (None, Vc), "5.weight": (U5, None)}
    coeffs = train_coefficients(model, subspaces, keep_residual=keep_residual)
    assert [tuple(c.shape) for c in coeffs] == [(5, 4), (3, 2), (2, 36)]
    if keep_residual:
        torch.testing.assert_close(model(x), out_before, rtol=1e-5, atol=1e-6)
    W_start = {n: getattr(model.get_submodule(n.split(".")[0]), "weight").detach().clone() for n in subspaces}
    opt = torch.optim.Adam(coeffs, lr=1e-2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith("parametrizations.weight.original") for n in trainable) and len(trainable) == 3
    for _ in range(10):
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    state = model.state_dict()
    for n, t in before.items():  # biases and every unmapped tensor: bit-identical
        if n in state:
            assert torch.equal(state[n], t), n
    for n, (U, V) in subspaces.items():
        W = getattr(model.get_submodule(n.split(".")[0]), "weight").detach()
        delta = (W - W_start[n]).reshape(W.shape[0], -1)
        # ΔW = U ΔC Vᵀ, formed in float32 from an offset of size ‖W‖: rounding ~ε‖W‖
        bound = 1e-6 + 4 * torch.finfo(torch.float32).eps * float(W.norm() / delta.norm())
        assert rel(project64(delta, U, V), delta) <= bound, n  # ‖(I − P)ΔW‖ / ‖ΔW‖
    parametrized_out = model(x).detach()
    merge(model)
    assert not torch.nn.utils.parametrize.is_parametrized(model[0])
    assert set(model.state_dict()) == set(before)
    assert rel(model(x), parametrized_out) <= 1e-6


def test_lora_with_frozen_factor_bases(gen):
    seeded(gen)
    base = torch.nn.Linear(24, 18)
    CA, CB = orthonormal(24, 6, gen), orthonormal(18, 5, gen)
    lora = SubspaceLoRALinear(base, CA, CB, rank=4, alpha=8.0, generator=gen)
    x, y = torch.randn(32, 24, generator=gen), torch.randn(32, 18, generator=gen)
    assert torch.equal(lora(x), base(x))  # L_B = 0 at the start, as LoRA
    assert sorted(n for n, p in lora.named_parameters() if p.requires_grad) == ["L_A", "L_B"]
    assert lora.L_A.numel() + lora.L_B.numel() == 6 * 4 + 5 * 4
    base_before = {n: t.clone() for n, t in base.state_dict().items()}
    opt = torch.optim.SGD([lora.L_A, lora.L_B], lr=0.1)
    for _ in range(5):
        ((lora(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(base.state_dict()[n], t) for n, t in base_before.items())
    A, B = lora.factors()
    assert rel(A, (CA.double() @ lora.L_A.double()).T) <= 1e-6 and rel(B, CB.double() @ lora.L_B.double()) <= 1e-6
    assert rel(A, project64(A, None, CA)) <= 1e-6 and rel(B, project64(B, CB, None)) <= 1e-6
    expect = base(x).double() + 2.0 * (x.double() @ A.double().T @ B.double().T)  # s = alpha / r = 2
    assert rel(lora(x), expect) <= 1e-6
    assert rel(lora.merge()(x), lora(x)) <= 1e-6
    rs = SubspaceLoRALinear(base, CA, CB, rank=4, alpha=8.0, rslora=True)
    assert rs.scaling == 4.0
    with pytest.raises(ValueError, match="alpha must be a finite number, got nan"):
        SubspaceLoRALinear(base, CA, CB, rank=4, alpha=float("nan"))
    with pytest.raises(ValueError, match="rank must be a positive integer, got True"):
        SubspaceLoRALinear(base, CA, CB, rank=True)


def test_lora_from_subspaces_of_a_zoo(gen):
    A_stack = torch.randn(8, 4, 24, generator=gen, dtype=torch.float64)   # lora_A: r × in
    B_stack = torch.randn(8, 18, 4, generator=gen, dtype=torch.float64)   # lora_B: out × r
    sub_A = unisub.SubspaceAccumulator().update(A_stack).finalize(slot="lora_A", rank=3)
    sub_B = unisub.SubspaceAccumulator().update(B_stack).finalize(slot="lora_B", rank=3)
    lora = SubspaceLoRALinear.from_subspaces(torch.nn.Linear(24, 18), sub_A, sub_B, rank=2)
    assert lora.basis_A.shape == (24, 3) and lora.basis_B.shape == (18, 3)
    sub_A.bases.pop("in")
    with pytest.raises(ValueError, match="lora_A has no 'in' basis"):
        SubspaceLoRALinear.from_subspaces(torch.nn.Linear(24, 18), sub_A, sub_B, rank=2)


def test_torchscript_modules_call_the_ops(gen, tmp_path):
    seeded(gen)
    lin = torch.nn.Linear(8, 6)
    layer = SubspaceLinear.from_linear(lin, (orthonormal(6, 3, gen), orthonormal(8, 2, gen)))
    lora = SubspaceLoRALinear(torch.nn.Linear(8, 6), orthonormal(8, 3, gen), orthonormal(6, 2, gen), rank=2)
    with torch.no_grad():
        lora.L_B.normal_(generator=gen)
    x = torch.randn(5, 8, generator=gen)
    for module in (layer, lora):
        scripted = torch.jit.script(module)
        assert "unisub::reconstruct" in str(scripted.inlined_graph)
        torch.testing.assert_close(scripted(x), module(x), rtol=1e-6, atol=1e-6)
        scripted(x).sum().backward()  # gradients flow through the op's autograd into the module's tensors
        trainable = [p for p in module.parameters() if p.requires_grad]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
        scripted.save(str(tmp_path / "m.pt"))
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.pt"))(x), module(x), rtol=1e-6, atol=1e-6)


def test_compiled_training_step_fullgraph(gen):
    seeded(gen)
    layer = SubspaceLinear.from_linear(torch.nn.Linear(8, 6), (orthonormal(6, 3, gen), None))
    lora = SubspaceLoRALinear(torch.nn.Linear(6, 4), orthonormal(6, 3, gen), orthonormal(4, 2, gen), rank=2)
    with torch.no_grad():
        lora.L_B.normal_(generator=gen)
    model = torch.nn.Sequential(layer, torch.nn.Tanh(), lora)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)

    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    loss_fn(x, y).backward()
    eager = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    compiled = torch.compile(loss_fn, fullgraph=True)
    compiled(x, y).backward()
    for g_eager, p in zip(eager, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(p.grad, g_eager, rtol=1e-5, atol=1e-6)


def test_bad_input_fails_at_construction(gen):
    lin = torch.nn.Linear(8, 6)
    with pytest.raises(ValueError, match=r"basis U \(out\) has 8 rows but the parameter has 6"):
        SubspaceLinear.from_linear(lin, (orthonormal(8, 2, gen), None))
    with pytest.raises(ValueError, match="orthonormal columns"):
        SubspaceLinear.from_linear(lin, (None, 3 * orthonormal(8, 2, gen)))
    with pytest.raises(ValueError, match=r"coefficients must have shape \(2, 8\)"):
        SubspaceLinear(torch.zeros(6, 8), orthonormal(6, 2, gen), None, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        SubspaceLoRALinear(lin, orthonormal(8, 2, gen), orthonormal(6, 2, gen), rank=0)
    with pytest.raises(ValueError, match=r"basis V \(in\) has 6 rows but the parameter has 8"):
        SubspaceLoRALinear(lin, orthonormal(6, 2, gen), orthonormal(6, 2, gen), rank=2)
    with pytest.raises(KeyError, match="did you mean '0.weight'"):
        train_coefficients(torch.nn.Sequential(lin), {"0.weights": (orthonormal(6, 2, gen), None)})


def test_mapping_a_parametrized_weight_says_so(gen):
    # After train_coefficients, "0.weight" is no parameter; the error says why instead of guessing
    # an unrelated layer by name.
    model = make_model(gen)
    subspaces = {"0.weight": (orthonormal(16, 5, gen), orthonormal(10, 4, gen))}
    train_coefficients(model, subspaces)
    with pytest.raises(KeyError, match=r"'0.weight' \(it is parametrized.*'0.parametrizations.weight.original'"):
        unisub.ConvergenceTracker(model, subspaces)
