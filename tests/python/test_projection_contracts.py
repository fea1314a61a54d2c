"""Op contracts of the projection ops: opcheck, gradcheck, torch.compile, and every bad input's
message."""
import pytest
import torch

import unisub


def orthonormal(rows, cols, seed, dtype=torch.float64, batch=()):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, rows, cols, generator=g, dtype=torch.float64))
    return Q.to(dtype)


def samples(device, requires_grad=False):
    g = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.float64):
        for batch in ((), (2,)):
            for sides in ("left", "right", "both", "none"):
                G = torch.randn(*batch, 7, 5, generator=g, dtype=dtype).to(device)
                U = orthonormal(7, 3, 1, dtype).to(device) if sides in ("left", "both") else None
                V = orthonormal(5, 2, 2, dtype, batch).to(device) if sides in ("right", "both") else None
                if requires_grad and dtype == torch.float64:
                    G.requires_grad_()
                    for B in (U, V):
                        if B is not None:
                            B.requires_grad_()
                yield G, U, V


def test_opcheck_project(device):
    for G, U, V in samples(device, requires_grad=True):
        for complement in (False, True):
            torch.library.opcheck(torch.ops.unisub.project.default, (G, U, V, complement, True))


def test_opcheck_project_inplace_and_list(device):
    for G, U, V in samples(device):
        torch.library.opcheck(torch.ops.unisub.project_.default, (G.clone(), U, V, True, True))
    Gs = [G.clone() for G, _, _ in samples(device)][:6]
    Us = [U for _, U, _ in samples(device)][:6]
    Vs = [V for _, _, V in samples(device)][:6]
    dtype = Gs[0].dtype
    Gs = [G.to(dtype) for G in Gs]
    Us = [None if U is None else U.to(dtype) for U in Us]
    Vs = [None if V is None else V.to(dtype) for V in Vs]
    torch.library.opcheck(torch.ops.unisub.project_list_.default, (Gs, Us, Vs, False, True))


def test_opcheck_coefficients_reconstruct_energy(device):
    for G, U, V in samples(device, requires_grad=True):
        torch.library.opcheck(torch.ops.unisub.coefficients.default, (G, U, V, True))
        C = unisub.coefficients(G, U, V).detach().requires_grad_(G.requires_grad)
        torch.library.opcheck(torch.ops.unisub.reconstruct.default, (C, U, V, True))
        torch.library.opcheck(torch.ops.unisub.subspace_energy.default, (G.detach(), None if U is None else U.detach(),
                                                                         None if V is None else V.detach(), True))


@pytest.mark.parametrize("complement", [False, True])
def test_gradcheck_project(complement, device):
    # U and V are differentiated as free matrices (the exact derivative of the formula).
    for G, U, V in samples(device, requires_grad=True):
        if G.dtype != torch.float64:
            continue
        f = lambda G, U, V: unisub.project(G, U, V, complement, check_basis=False)  # noqa: E731
        assert torch.autograd.gradcheck(f, (G, U, V))
        assert torch.autograd.gradgradcheck(f, (G, U, V))


def test_gradcheck_coefficients_and_reconstruct(device):
    for G, U, V in samples(device, requires_grad=True):
        if G.dtype != torch.float64:
            continue
        assert torch.autograd.gradcheck(lambda G, U, V: unisub.coefficients(G, U, V, check_basis=False), (G, U, V))
        C = unisub.coefficients(G, U, V).detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda C, U, V: unisub.reconstruct(C, U, V, check_basis=False), (C, U, V))


def test_gradient_broadcast_basis_is_summed(device):
    G = torch.randn(3, 6, 4, dtype=torch.float64, device=device, requires_grad=True)
    U = orthonormal(6, 2, 5).to(device).requires_grad_()
    unisub.project(G, U, None).square().sum().backward()
    U2 = U.detach().clone().requires_grad_()
    (U2 @ (U2.T @ G.detach())).square().sum().backward()
    torch.testing.assert_close(U.grad, U2.grad)


def test_torch_compile_fullgraph(device):
    def step(G, U, V, grads):
        torch.ops.unisub.project_list_(grads, [U, None], [None, V], True, False)
        P = unisub.project(G, U, V)
        return P, unisub.subspace_energy(G, U, V), unisub.reconstruct(unisub.coefficients(G, U, V), U, V)

    compiled = torch.compile(step, fullgraph=True)
    G = torch.randn(2, 8, 6, dtype=torch.float64, device=device)
    U, V = orthonormal(8, 3, 1).to(device), orthonormal(6, 2, 2).to(device)
    grads1 = [torch.randn(8, 6, dtype=torch.float64, device=device) for _ in range(2)]
    grads2 = [g.clone() for g in grads1]
    for got, want in zip(compiled(G, U, V, grads1), step(G, U, V, grads2)):
        torch.testing.assert_close(got, want)
    for a, b in zip(grads1, grads2):
        torch.testing.assert_close(a, b)


G = torch.randn(6, 5)
U = orthonormal(6, 2, 1, torch.float32)
V = orthonormal(5, 2, 2, torch.float32)

CASES = [
    ("U rows", lambda: unisub.project(G, orthonormal(7, 2, 1, torch.float32), None), r"project: U must have 6 rows"),
    ("V rows", lambda: unisub.project(G, None, orthonormal(4, 2, 1, torch.float32)), r"project: V must have 5 rows"),
    ("U too wide", lambda: unisub.project(G, torch.randn(6, 7), None), r"U must not have more columns than rows"),
    ("U not orthonormal", lambda: unisub.project(G, U * 1.1, None), r"U must have orthonormal columns"),
    ("U non-finite", lambda: unisub.project(G, torch.full((6, 2), float("nan")), None), r"U must have orthonormal"),
    ("U dtype", lambda: unisub.project(G, U.double(), None), r"U must have the dtype of G \(Float\), got Double"),
    ("G 1-D", lambda: unisub.project(torch.randn(6), U, None), r"G must have at least 2 dimensions"),
    ("G integer", lambda: unisub.project(torch.ones(6, 5, dtype=torch.long), U, None), r"G must be float16"),
    ("U batch", lambda: unisub.project(torch.randn(3, 6, 5), orthonormal(6, 2, 1, torch.float32, (2,)), None),
     r"batch dims of U \[2\] must broadcast"),
    ("in-place batch", lambda: unisub.project_(G.clone(), orthonormal(6, 2, 1, torch.float32, (2,)), None),
     r"project_: the batch dims of U \[2\] must broadcast to"),
    ("coefficients V", lambda: unisub.coefficients(G, U, orthonormal(6, 2, 1, torch.float32)), r"coefficients: V must have 5 rows"),
    ("reconstruct U", lambda: unisub.reconstruct(torch.randn(3, 2), U, V), r"reconstruct: U must have shape \[\*, rows, 3\]"),
    ("energy V", lambda: unisub.subspace_energy(G, None, V * 2), r"subspace_energy: V must have orthonormal"),
    ("empty list", lambda: unisub.project_list_([], [], []), r"project_list_: Gs must hold at least one tensor"),
    ("Us length", lambda: unisub.project_list_([G.clone()], [U, U], [None]), r"Us must have one entry .* expected 1 entries, got 2"),
    ("Vs length", lambda: unisub.project_list_([G.clone()], [U], []), r"Vs must have one entry .* expected 1 entries, got 0"),
    ("list rows", lambda: unisub.project_list_([G.clone(), torch.randn(4, 5)], [U, U], [None, None]), r"Us\[1\] must have 4 rows"),
    ("list dtype", lambda: unisub.project_list_([G.clone(), G.double()], [U, U], [None, None]), r"Us\[1\] must have the dtype of Gs\[1\]"),
]


@pytest.mark.parametrize("call,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(call, pattern):
    with pytest.raises(RuntimeError, match=pattern) as info:
        call()
    assert "unisub." in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_are_rejected():
    with pytest.raises(RuntimeError, match=r"G and U must be on the same device"):
        unisub.project(G.cuda(), U, None)
    with pytest.raises(RuntimeError, match=r"Gs\[1\] and Gs\[0\] must be on the same device"):
        unisub.project_list_([G.clone(), G.cuda()], [None, None], [None, None])


def test_torch_export(device):
    class Monitor(torch.nn.Module):
        def forward(self, G, U, V, U2):
            return (unisub.project(G, U, V, True), unisub.subspace_energy(G, U, V),
                    unisub.principal_angles(U, U2), unisub.subspace_distance(U, U2, "max"))

    G = torch.randn(9, 7, dtype=torch.float64, device=device)
    U, V, U2 = orthonormal(9, 3, 1).to(device), orthonormal(7, 2, 2).to(device), orthonormal(9, 2, 3).to(device)
    exported = torch.export.export(Monitor(), (G, U, V, U2))
    targets = {str(n.target) for n in exported.graph.nodes}
    assert {"unisub.project.default", "unisub.principal_angles.default"} <= targets
    for got, want in zip(exported.module()(G, U, V, U2), Monitor()(G, U, V, U2)):
        torch.testing.assert_close(got, want)


def test_torchscript_with_optional_bases(device):
    @torch.jit.script
    def hook(G: torch.Tensor, U: torch.Tensor, grads: list[torch.Tensor], bases: list[torch.Tensor | None]):
        none: list[torch.Tensor | None] = [None for _ in grads]
        torch.ops.unisub.project_list_(grads, bases, none, True, False)
        return torch.ops.unisub.project(G, U, None, False, True), torch.ops.unisub.principal_angles(U, U, True)

    G = torch.randn(6, 4, dtype=torch.float64, device=device)
    U = orthonormal(6, 2, 1).to(device)
    grads = [torch.randn(6, 3, dtype=torch.float64, device=device), torch.randn(5, dtype=torch.float64, device=device)]
    want = [grads[0] - U @ (U.T @ grads[0]), torch.zeros(5, dtype=torch.float64, device=device)]
    P, theta = hook(G, U, grads, [U, None])
    torch.testing.assert_close(P, U @ (U.T @ G))
    assert theta.abs().max().item() <= 1e-7  # equal spans: zero angles
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)
