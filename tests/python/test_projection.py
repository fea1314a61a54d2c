"""project / project_ / project_list_ / coefficients / reconstruct / subspace_energy against
float64 references built from plain torch matmuls.

Error bounds (normwise, relative to ‖G‖_F, which is the scale every rounding error of the GEMM
chain carries): 1e-6 for float32, 1e-13 for float64 — the issue's acceptance bounds. The
references are computed in float64 from the very same (rounded) inputs.
"""
import itertools

import pytest
import torch

import unisub

TOL = {torch.float32: 1e-6, torch.float64: 1e-13}


def orthonormal(rows, cols, gen, dtype=torch.float64, batch=()):
    Q, _ = torch.linalg.qr(torch.randn(*batch, rows, cols, generator=gen, dtype=torch.float64))
    return Q.to(dtype)


def reference(G, U, V, complement=False):
    G = G.double().cpu()
    P = G
    if U is not None:
        U = U.double().cpu()
        P = U @ (U.mT @ P)
    if V is not None:
        V = V.double().cpu()
        P = (P @ V) @ V.mT
    return G - P if complement else P


def assert_close_to(got, want, scale, dtype):
    err = (got.double().cpu() - want).norm().item()
    bound = TOL[dtype] * scale.double().cpu().norm().item() + 1e-300
    assert err <= bound, f"error {err:.3e} exceeds {bound:.3e}"


SIDES = ["left", "right", "both", "none"]


def bases_for(sides, m, n, k, l, gen, dtype, device, batch=()):  # noqa: E741
    U = orthonormal(m, k, gen, dtype, batch).to(device) if sides in ("left", "both") else None
    V = orthonormal(n, l, gen, dtype, batch).to(device) if sides in ("right", "both") else None
    return U, V


@pytest.mark.parametrize("sides", SIDES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("complement", [False, True])
def test_project_matches_reference(sides, dtype, complement, device, gen):
    m, n, k, l = 96, 80, 12, 7  # noqa: E741
    G = torch.randn(m, n, generator=gen, dtype=dtype).to(device)
    U, V = bases_for(sides, m, n, k, l, gen, dtype, device)
    P = unisub.project(G, U, V, complement)
    assert P.shape == G.shape and P.dtype == dtype and P.device == G.device
    assert_close_to(P, reference(G, U, V, complement), G, dtype)
    H = G.clone()
    assert unisub.project_(H, U, V, complement) is H
    assert_close_to(H, reference(G, U, V, complement), G, dtype)


@pytest.mark.parametrize("sides", ["left", "right", "both"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_is_idempotent_self_adjoint_and_complementary(sides, dtype, device, gen):
    m, n = 64, 48
    A = torch.randn(m, n, generator=gen, dtype=dtype).to(device)
    B = torch.randn(m, n, generator=gen, dtype=dtype).to(device)
    U, V = bases_for(sides, m, n, 9, 5, gen, dtype, device)
    PA = unisub.project(A, U, V)
    assert_close_to(unisub.project(PA, U, V), PA.double().cpu(), A, dtype)
    lhs = (PA * B).sum().double()
    rhs = (A * unisub.project(B, U, V)).sum().double()
    assert abs(lhs - rhs).item() <= TOL[dtype] * A.norm().item() * B.norm().item()
    total = PA + unisub.project(A, U, V, complement=True)
    assert_close_to(total, A.double().cpu(), A, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_with_shared_and_per_entry_bases(dtype, device, gen):
    G = torch.randn(3, 4, 20, 16, generator=gen, dtype=dtype).to(device)
    shared_U = orthonormal(20, 5, gen, dtype).to(device)
    per_entry_V = orthonormal(16, 3, gen, dtype, batch=(4,)).to(device)  # broadcast over dim 0
    for complement in (False, True):
        want = reference(G, shared_U[None, None], per_entry_V[None], complement)
        assert_close_to(unisub.project(G, shared_U, per_entry_V, complement), want, G, dtype)
        H = G.clone()
        unisub.project_(H, shared_U, per_entry_V, complement)
        assert_close_to(H, want, G, dtype)


def test_out_of_place_broadcasts_a_single_matrix_against_batched_bases(device, gen):
    G = torch.randn(10, 8, generator=gen, dtype=torch.float64).to(device)
    U = orthonormal(10, 3, gen, batch=(5,)).to(device)
    P = unisub.project(G, U, None, complement=True)
    assert P.shape == (5, 10, 8)
    assert_close_to(P, reference(G.expand(5, 10, 8), U, None, True), G.expand(5, 10, 8), torch.float64)


def test_in_place_on_non_contiguous_and_half_precision(device, gen):
    G = torch.randn(40, 30, generator=gen, dtype=torch.float64).to(device)
    U = orthonormal(30, 4, gen).to(device)
    Gt = G.clone().T  # [30, 40], transposed storage
    want = reference(Gt, U, None, True)
    unisub.project_(Gt, U, None, complement=True)
    assert_close_to(Gt, want, G, torch.float64)

    for half in (torch.float16, torch.bfloat16):
        H = torch.randn(3, 30, 40, generator=gen).to(device).to(half)
        Uf = U.float()
        want = reference(H, Uf, None)
        unisub.project_(H, Uf, None)
        assert H.dtype == half
        # One rounding to the half format on the way back.
        err = (H.double().cpu() - want).abs().max().item()
        assert err <= torch.finfo(half).eps * want.abs().max().item()
        out = unisub.project(H, Uf, None)
        assert out.dtype == torch.float32


@pytest.mark.parametrize("sides", SIDES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reconstruct_of_coefficients_is_the_projection(sides, dtype, device, gen):
    G = torch.randn(2, 50, 40, generator=gen, dtype=dtype).to(device)
    U, V = bases_for(sides, 50, 40, 6, 4, gen, dtype, device)
    C = unisub.coefficients(G, U, V)
    assert C.shape == (2, U.shape[-1] if U is not None else 50, V.shape[-1] if V is not None else 40)
    Cref = G.double().cpu()
    if U is not None:
        Cref = U.double().cpu().mT @ Cref
    if V is not None:
        Cref = Cref @ V.double().cpu()
    assert_close_to(C, Cref, G, dtype)
    assert_close_to(unisub.reconstruct(C, U, V), reference(G, U, V), G, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_structured_inputs(dtype, device, gen):
    m, n = 60, 50
    U = orthonormal(m, 6, gen, dtype).to(device)
    V = orthonormal(n, 4, gen, dtype).to(device)
    inside = U @ torch.randn(6, 4, generator=gen, dtype=dtype).to(device) @ V.T
    # A tensor inside the subspace: projection keeps it, the complement removes it.
    assert_close_to(unisub.project(inside, U, V), inside.double().cpu(), inside, dtype)
    assert_close_to(unisub.project(inside, U, V, complement=True), torch.zeros(m, n, dtype=torch.float64),
                    inside, dtype)
    # Huge and tiny scales: no overflow or underflow beyond the input's own range.
    for scale in (1e30, 1e-30) if dtype == torch.float32 else (1e300, 1e-300):
        G = torch.randn(m, n, generator=gen, dtype=torch.float64) * scale
        G = G.to(dtype).to(device)
        assert_close_to(unisub.project(G, U, V, True), reference(G, U, V, True), G, dtype)
    # subspace_energy squares entries in G's dtype: exact while the squares stay normal numbers
    # (float64 entries from randn·1e-150 reach 1e-154, whose squares are subnormal: not exact).
    for scale in (1e15, 1e-15) if dtype == torch.float32 else (1e100, 1e-100):
        G = (torch.randn(m, n, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)
        energy = reference(G, U, V).norm() ** 2 / G.double().cpu().norm() ** 2
        assert abs(unisub.subspace_energy(G, U, V).item() - energy.item()) <= 10 * TOL[dtype]
    zero = torch.zeros(m, n, dtype=dtype, device=device)
    assert torch.equal(unisub.project(zero, U, V), zero)
    assert torch.isnan(unisub.subspace_energy(zero, U, V))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_subspace_energy(dtype, device, gen):
    G = torch.randn(4, 70, 30, generator=gen, dtype=dtype).to(device)
    for sides in SIDES:
        U, V = bases_for(sides, 70, 30, 8, 5, gen, dtype, device)
        e = unisub.subspace_energy(G, U, V)
        P = reference(G, U, V)
        want = P.square().sum((-2, -1)) / G.double().cpu().square().sum((-2, -1))
        assert e.shape == (4,) and e.dtype == dtype
        assert (e.double().cpu() - want).abs().max().item() <= 10 * TOL[dtype]


def model_like_list(gen, dtype, device, with_bases=True):
    """A miniature transformer's gradients: repeated shapes, vectors without bases, a batch."""
    Gs, Us, Vs = [], [], []
    shared = orthonormal(32, 4, gen, dtype).to(device)
    for layer in range(3):
        for shape in [(32, 32), (32, 32), (96, 32), (32, 96), (32,), (32,)]:
            Gs.append(torch.randn(shape, generator=gen, dtype=dtype).to(device))
            if len(shape) == 1 or not with_bases:
                Us.append(None)
                Vs.append(None)
            else:
                Us.append(orthonormal(shape[0], 5, gen, dtype).to(device) if shape[0] != 32 else shared)
                Vs.append(orthonormal(shape[1], 3, gen, dtype).to(device) if layer % 2 else None)
    Gs.append(torch.randn(2, 16, 12, generator=gen, dtype=dtype).to(device))
    Us.append(orthonormal(16, 2, gen, dtype, batch=(2,)).to(device))
    Vs.append(None)
    return Gs, Us, Vs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("complement", [False, True])
def test_project_list_matches_per_tensor_project(dtype, complement, device, gen):
    Gs, Us, Vs = model_like_list(gen, dtype, device)
    want = [reference(G, U, V, complement) if G.dim() >= 2 else None for G, U, V in zip(Gs, Us, Vs)]
    vectors = [i for i, G in enumerate(Gs) if G.dim() < 2]
    Gs = [G for G in Gs if G.dim() >= 2]  # vectors have no matrix shape to project
    Us = [U for i, U in enumerate(Us) if i not in vectors]
    Vs = [V for i, V in enumerate(Vs) if i not in vectors]
    want = [w for w in want if w is not None]
    originals = [G.clone() for G in Gs]
    assert unisub.project_list_(Gs, Us, Vs, complement) is Gs
    for G, w, o in zip(Gs, want, originals):
        assert_close_to(G, w, o, dtype)


def test_project_list_of_half_gradients_with_float32_bases(device, gen):
    Gs = [torch.randn(24, 20, generator=gen).to(device).to(torch.bfloat16) for _ in range(5)]
    U = orthonormal(24, 3, gen, torch.float32).to(device)
    want = [reference(G, U, None, True) for G in Gs]
    unisub.project_list_(Gs, [U] * 5, [None] * 5, complement=True)
    for G, w in zip(Gs, want):
        assert G.dtype == torch.bfloat16
        assert (G.double().cpu() - w).abs().max().item() <= torch.finfo(torch.bfloat16).eps * w.abs().max().item()


def test_project_list_validates_everything_before_writing(device, gen):
    Gs = [torch.randn(8, 6, generator=gen, dtype=torch.float64).to(device) for _ in range(3)]
    before = [G.clone() for G in Gs]
    U = orthonormal(8, 2, gen).to(device)
    bad = torch.randn(8, 2, generator=gen, dtype=torch.float64).to(device)
    with pytest.raises(RuntimeError, match=r"Us\[2\] must have orthonormal columns"):
        unisub.project_list_(Gs, [U, U, bad], [None] * 3)
    with pytest.raises(RuntimeError, match=r"Us\[1\] must have 8 rows"):
        unisub.project_list_(Gs, [U, U[:7], U], [None] * 3)
    for G, b in zip(Gs, before):
        assert torch.equal(G, b)


def test_check_basis_false_skips_the_check(device, gen):
    G = torch.randn(8, 6, generator=gen, dtype=torch.float64).to(device)
    W = torch.randn(8, 2, generator=gen, dtype=torch.float64).to(device)
    with pytest.raises(RuntimeError, match="orthonormal"):
        unisub.project(G, W, None)
    # Unchecked, the op computes the formula W Wᵀ G as written.
    torch.testing.assert_close(unisub.project(G, W, None, check_basis=False), W @ (W.T @ G))


def test_tolerance_of_the_check_is_ten_root_epsilon(device, gen):
    G = torch.randn(8, 6, generator=gen, dtype=torch.float64).to(device)
    U = orthonormal(8, 2, gen).to(device)
    tol = 10 * torch.finfo(torch.float64).eps ** 0.5
    unisub.project(G, U * (1 + 0.4 * tol), None)  # diagonal off by 0.8·tol: accepted
    with pytest.raises(RuntimeError, match="orthonormal"):
        unisub.project(G, U * (1 + 0.6 * tol), None)  # off by 1.2·tol: rejected


@pytest.mark.parametrize("complement", [False, True])
def test_project_list_leaves_entries_without_bases_of_any_shape(complement, device, gen):
    Gs, Us, Vs = model_like_list(gen, torch.float32, device)
    originals = [G.clone() for G in Gs]
    unisub.project_list_(Gs, Us, Vs, complement)
    for G, U, V, o in zip(Gs, Us, Vs, originals):
        if U is None and V is None:
            # No basis: the projection is the identity, its complement zero.
            assert torch.equal(G, torch.zeros_like(o) if complement else o)
        else:
            assert_close_to(G, reference(o, U, V, complement), o, torch.float32)


@pytest.mark.parametrize("dtype,scales", [(torch.float32, (1e-21, 1e-23, 1e-30, 1e20, 1e30)),
                                          (torch.float64, (1e-160, 1e-250, 1e160, 1e250))])
def test_subspace_energy_of_tiny_and_huge_tensors(dtype, scales, gen):
    # The squares of G's entries underflow (or overflow) G's dtype long before G itself does:
    # float32 gradients of norm 1e-21 gave an energy off by 3e-4, 1e-23 gave NaN. The ratio does
    # not depend on G's scale.
    U = orthonormal(40, 6, gen, dtype)
    V = orthonormal(30, 4, gen, dtype)
    G0 = torch.randn(2, 40, 30, generator=gen, dtype=torch.float64)
    want = reference(G0, U, V).square().sum((-2, -1)) / G0.square().sum((-2, -1))
    for scale in scales:
        G = (G0 * scale).to(dtype)
        want_here = want if dtype == torch.float64 else (reference(G, U, V).square().sum((-2, -1))
                                                         / G.double().square().sum((-2, -1)))
        got = unisub.subspace_energy(G, U, V)
        assert ((got.double() - want_here).abs() <= 10 * TOL[dtype]).all(), scale
    mixed = torch.stack([G0[0].to(dtype) * 1e-25 if dtype == torch.float32 else G0[0] * 1e-200,
                         torch.zeros(40, 30, dtype=dtype)])
    e = unisub.subspace_energy(mixed, U, V)
    assert abs(e[0].item() - want[0].item()) <= 10 * TOL[dtype] and torch.isnan(e[1])


@pytest.mark.parametrize("op", ["project_", "project_list_", "subspace_energy"])
def test_non_differentiable_projection_ops_with_bases_that_require_grad(op, gen):
    # No autograd kernel: the result is the plain answer and backward only warns (it used to record
    # the in-place steps and fail with "modified by an inplace operation").
    U = orthonormal(8, 3, gen, torch.float32).requires_grad_(True)
    G = torch.randn(8, 5, generator=gen)
    want = reference(G, U.detach(), None).float()
    if op == "project_":
        unisub.project_(G, U, None)
        out = G
    elif op == "project_list_":
        unisub.project_list_([G], [U], [None])
        out = G
    else:
        out = unisub.subspace_energy(G, U, None)
        want = want.square().sum() / G.square().sum()
    torch.testing.assert_close(out.detach(), want)
    if out.requires_grad:
        with pytest.warns(UserWarning, match="autograd kernel was not registered"):
            out.sum().backward()
