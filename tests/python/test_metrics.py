"""principal_angles, subspace_distance and explained_variance against known answers and float64
references (scipy.linalg.subspace_angles, explicit unfoldings in plain torch).

Bounds: float64 angles from bases built with known angles are recovered to 1e-12 absolute over
[1e-8, π/2]; float32 inputs (the angles of the rounded bases, from scipy in float64) above 1e-3
to 1e-6 relative; explained variance to 1e-12 (float64) and 1e-6 (float32) absolute.
"""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

import unisub
from references import unfold


def bases_with_angles(m, angles, gen, extra_cols=0, batch=()):
    """U1 = Q[:, :k + extra], U2 = Q[:, :k] cos θ + Q[:, k+extra : 2k+extra] sin θ, Q orthogonal:
    the principal angles of span(U1), span(U2) are exactly θ."""
    k = len(angles)
    Q, _ = torch.linalg.qr(torch.randn(*batch, m, m, generator=gen, dtype=torch.float64))
    theta = torch.tensor(angles, dtype=torch.float64)
    U1 = Q[..., : k + extra_cols]
    U2 = Q[..., :k] * torch.cos(theta) + Q[..., k + extra_cols : 2 * k + extra_cols] * torch.sin(theta)
    return U1, U2


ANGLES = [1e-8, 3e-7, 1e-5, 1e-3, 0.1, 0.7, math.pi / 4, 1.0, 1.4, math.pi / 2 - 1e-6, math.pi / 2]


def test_known_angles_float64(device, gen):
    U1, U2 = bases_with_angles(40, ANGLES, gen, extra_cols=3)
    theta = unisub.principal_angles(U1.to(device), U2.to(device))
    assert theta.shape == (len(ANGLES),) and theta.dtype == torch.float64
    err = (theta.cpu() - torch.tensor(ANGLES, dtype=torch.float64)).abs().max().item()
    assert err <= 1e-12, f"max abs error {err:.3e}"
    # Symmetric in its arguments, k1 ≠ k2 included.
    swapped = unisub.principal_angles(U2.to(device), U1.to(device))
    assert (swapped.cpu() - theta.cpu()).abs().max().item() <= 1e-12


def test_float32_relative_accuracy(device, gen):
    U1, U2 = bases_with_angles(50, [1e-3, 3e-3, 0.05, 0.5, 1.2, 1.5], gen)
    U1f, U2f = U1.float(), U2.float()
    theta = unisub.principal_angles(U1f.to(device), U2f.to(device))
    assert theta.dtype == torch.float32
    ref = np.sort(scipy.linalg.subspace_angles(U1f.double().numpy(), U2f.double().numpy()))
    rel = np.abs(theta.cpu().double().numpy() - ref) / ref
    assert rel.max() <= 1e-6, f"max relative error {rel.max():.3e}"


def test_batch_dims_broadcast(device, gen):
    U1, U2 = bases_with_angles(12, [0.2, 0.9], gen, extra_cols=1, batch=(3,))
    U1 = U1[:, None]                 # [3, 1, 12, 3]
    U2 = torch.stack([U2, U2.flip(0)], 1)  # [3, 2, 12, 2]
    theta = unisub.principal_angles(U1.to(device), U2.to(device)).cpu()
    assert theta.shape == (3, 2, 2)
    for i in range(3):
        for j in range(2):
            ref = np.sort(scipy.linalg.subspace_angles(U1[i, 0].numpy(), U2[i, j].numpy()))
            assert np.abs(theta[i, j].numpy() - ref).max() <= 1e-12


def test_identical_and_orthogonal_subspaces(device, gen):
    Q, _ = torch.linalg.qr(torch.randn(20, 8, generator=gen, dtype=torch.float64))
    Q = Q.to(device)
    assert unisub.principal_angles(Q[:, :4], Q[:, :4]).abs().max().item() <= 1e-15
    assert (unisub.principal_angles(Q[:, :4], Q[:, 4:]) - math.pi / 2).abs().max().item() <= 1e-15
    # A rotated basis of the same span has zero angles too.
    R, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    assert unisub.principal_angles(Q[:, :4], Q[:, :4] @ R.to(device)).abs().max().item() <= 1e-14


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_subspace_distances(dtype, device, gen):
    angles = [1e-6, 0.3, 1.1]
    U1, U2 = bases_with_angles(30, angles, gen, extra_cols=2)
    U1, U2 = U1.to(dtype).to(device), U2.to(dtype).to(device)
    t = torch.tensor(angles, dtype=torch.float64)
    want = {"projection": torch.sin(t).norm(), "geodesic": t.norm(), "max": torch.sin(t).max()}
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for metric, value in want.items():
        d = unisub.subspace_distance(U1, U2, metric)
        assert d.shape == () and d.dtype == dtype
        assert abs(d.double().item() - value.item()) <= tol, metric
    assert unisub.subspace_distance(U1, U1).item() <= tol


def explained_reference(X, U, dim, center):
    X = X.double().cpu()
    if center:
        X = X - X.mean(0, keepdim=True)
    A = unfold(X, dim)
    e = (U.double().cpu().T @ A).square().sum(1)
    return e.cumsum(0) / A.square().sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("center", [False, True])
def test_explained_variance(dtype, center, device, gen):
    X = torch.randn(7, 9, 6, 5, generator=gen, dtype=dtype).to(device)
    for dim in range(4):
        d = X.shape[dim]
        U, _ = torch.linalg.qr(torch.randn(d, min(d, 4), generator=gen, dtype=torch.float64))
        U = U.to(dtype).to(device)
        cum = unisub.explained_variance(X, U, dim, center)
        assert cum.shape == (U.shape[1],) and cum.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        assert (cum.double().cpu() - explained_reference(X, U, dim, center)).abs().max().item() <= tol
        assert (cum[1:] >= cum[:-1]).all()
    # A complete basis explains everything.
    full, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    assert abs(unisub.explained_variance(X, full.to(dtype).to(device), 1, center)[-1].item() - 1) <= 1e-6


def test_explained_variance_of_a_large_stack_is_blocked_over_models(device, gen):
    # 600 models of 128 x 64: more than one float64 block of 32 MiB.
    X = torch.randn(600, 128, 64, generator=gen).to(device)
    U, _ = torch.linalg.qr(torch.randn(600, 5, generator=gen, dtype=torch.float64))
    got = unisub.explained_variance(X, U.float().to(device), 0, center=True)
    assert (got.double().cpu() - explained_reference(X, U, 0, True)).abs().max().item() <= 1e-6
    V, _ = torch.linalg.qr(torch.randn(64, 5, generator=gen, dtype=torch.float64))
    got = unisub.explained_variance(X, V.float().to(device), 2)
    assert (got.double().cpu() - explained_reference(X, V, 2, False)).abs().max().item() <= 1e-6


def test_opcheck_and_compile(device, gen):
    U1, U2 = bases_with_angles(10, [0.1, 0.5], gen, extra_cols=1)
    U1, U2 = U1.to(device), U2.to(device)
    X = torch.randn(4, 10, 3, generator=gen, dtype=torch.float64).to(device)
    torch.library.opcheck(torch.ops.unisub.principal_angles.default, (U1, U2, True))
    for metric in ("projection", "geodesic", "max"):
        torch.library.opcheck(torch.ops.unisub.subspace_distance.default, (U1, U2, metric, True))
    torch.library.opcheck(torch.ops.unisub.explained_variance.default, (X, U1, 1, True, True))

    def f(U1, U2, X):
        return (unisub.principal_angles(U1, U2), unisub.subspace_distance(U1, U2, "geodesic"),
                unisub.explained_variance(X, U1, 1, True))

    for got, want in zip(torch.compile(f, fullgraph=True)(U1, U2, X), f(U1, U2, X)):
        torch.testing.assert_close(got, want)


Q4 = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))[0]
CASES = [
    ("rows differ", lambda: unisub.principal_angles(Q4, torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))[0]),
     r"principal_angles: U1 and U2 must span subspaces of the same space"),
    ("dtype", lambda: unisub.principal_angles(Q4, Q4.float()), r"U1 and U2 must have the same dtype"),
    ("too wide", lambda: unisub.principal_angles(Q4, torch.randn(6, 7, dtype=torch.float64)), r"U2 must not have more columns"),
    ("not orthonormal", lambda: unisub.principal_angles(Q4 * 2, Q4), r"U1 must have orthonormal columns"),
    ("batch", lambda: unisub.principal_angles(Q4.expand(2, 6, 3), Q4.expand(3, 6, 3)), r"batch dims of U1 \[2\] and U2 \[3\] must broadcast"),
    ("1-D", lambda: unisub.principal_angles(Q4[:, 0], Q4), r"U1 must have at least 2 dimensions"),
    ("metric", lambda: unisub.subspace_distance(Q4, Q4, "chordal"), r"metric must be 'projection', 'geodesic' or 'max', got 'chordal'"),
    ("ev U rows", lambda: unisub.explained_variance(torch.randn(3, 5, 6, dtype=torch.float64), Q4, 1), r"U must have shape \[5, k\]"),
    ("ev dim", lambda: unisub.explained_variance(torch.randn(3, 6, 6), Q4, 3), r"dim must be in \[-3, 2\]"),
    ("ev empty", lambda: unisub.explained_variance(torch.randn(0, 6, 6), Q4, 1), r"X must hold at least one model"),
    ("ev basis", lambda: unisub.explained_variance(torch.randn(3, 6, 2), Q4 * 3, 1), r"U must have orthonormal"),
]


@pytest.mark.parametrize("call,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(call, pattern):
    with pytest.raises(RuntimeError, match=pattern) as info:
        call()
    assert "unisub." in str(info.value)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_explained_variance_of_an_empty_basis_or_empty_dims(dim, gen):
    # k = 0 columns, or a zero-size dim of X, used to fail inside with a reshape error.
    X = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    empty = unisub.explained_variance(X, torch.zeros(X.shape[dim], 0, dtype=torch.float64), dim)
    assert empty.shape == (0,)
    Xe = torch.randn(3, 0, 5, dtype=torch.float64)
    d = Xe.shape[dim]
    U = torch.eye(d, dtype=torch.float64)[:, : min(d, 2)]
    cum = unisub.explained_variance(Xe, U, dim)  # nothing to explain: 0/0, as for a zero stack
    assert cum.shape == (U.shape[1],) and torch.isnan(cum).all()


@pytest.mark.parametrize("op", ["principal_angles", "subspace_distance", "explained_variance"])
def test_metrics_accept_bases_that_require_grad(op, gen):
    U1 = torch.linalg.qr(torch.randn(6, 3, generator=gen, dtype=torch.float64))[0]
    U2 = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64))[0]
    X = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    call = {"principal_angles": lambda A: unisub.principal_angles(A, U2),
            "subspace_distance": lambda A: unisub.subspace_distance(A, U2, "max"),
            "explained_variance": lambda A: unisub.explained_variance(X, A, 1, True)}[op]
    torch.testing.assert_close(call(U1.clone().requires_grad_(True)).detach(), call(U1))
