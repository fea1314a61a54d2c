"""CPU and CUDA agree: every op on the same inputs, on both devices (skipped without a GPU).

Bounds: values (Grams, spectra, projections, metrics) agree to 1e-10 relative to their norm for
float64 input and 1e-5 for float32; singular vectors, which the deterministic sign rule fixes,
agree column by column to 1e3·ε₆₄·σ₁/gapⱼ (float64), the sensitivity of a singular vector to a
backward-stable perturbation. The batched Jacobi kernel's shared-memory and global-memory paths
are both exercised, and its relative accuracy on graded matrices is checked as on CPU.
"""
import pytest
import torch

import unisub

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EPS64 = torch.finfo(torch.float64).eps
VALUE_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_close(cpu, cuda, tol, what):
    cpu, cuda = cpu.double(), cuda.double().cpu()
    scale = cpu.norm().clamp_min(1e-300)
    err = ((cuda - cpu).norm() / scale).item()
    assert err <= tol, f"{what}: CPU and CUDA differ by {err:.2e} relative (bound {tol:.0e})"


def assert_same_vectors(U_cpu, U_cuda, S, what):
    """Columns of U (float64) agree within 1e3 ε σ₁ / gapⱼ, where gapⱼ separates σⱼ from the rest."""
    S = S.double().cpu()
    diffs = (S.unsqueeze(-1) - S.unsqueeze(-2)).abs()
    diffs = diffs + torch.diag_embed(torch.full_like(S, float("inf")))
    gap = diffs.amin(-1).clamp_min(1e-300)
    bound = 1e3 * EPS64 * S[..., :1] / gap  # [..., k]
    err = (U_cuda.double().cpu() - U_cpu.double()).abs().amax(-2)
    assert (err <= bound.clamp_min(1e3 * EPS64)).all(), f"{what}: singular vectors differ by {err.max():.2e}"


# Shapes for the Jacobi kernel: the shared-memory path (columns and rotations fit on chip) and
# the global-memory path (600 × 300 needs 2 MiB); odd n, wide input and a single column too.
JACOBI_SHAPES = [(7, 32, 32), (3, 64, 64), (2, 80, 45), (2, 9, 5), (3, 5, 9), (4, 17, 1), (1, 600, 300)]


@pytest.mark.parametrize("shape", JACOBI_SHAPES, ids=str)
@pytest.mark.parametrize("method", ["jacobi", "gram", "lapack", "auto"])
def test_svd_agrees(method, shape, gen):
    A = torch.randn(shape, generator=gen, dtype=torch.float64)
    U, S, Vh = unisub.svd(A, -1, method)
    Ug, Sg, Vhg = unisub.svd(A.cuda(), -1, method)
    tol = 1e-12 if method != "gram" else 1e-9
    assert_close(S, Sg, tol, f"svd[{method}] S")
    assert_same_vectors(U, Ug, S, f"svd[{method}] U")
    assert_same_vectors(Vh.mT, Vhg.mT, S, f"svd[{method}] V")


@pytest.mark.parametrize("shape", [(64, 64, 64), (32, 40, 24)], ids=str)
def test_svd_float32_jacobi_meets_the_contract_on_cuda(shape, gen):
    A = torch.randn(shape, generator=gen).cuda()
    U, S, Vh = unisub.svd(A, -1, "jacobi")
    assert U.dtype == torch.float32
    A64 = A.double()
    rec = (U.double() * S.double().unsqueeze(-2)) @ Vh.double()
    assert ((rec - A64).norm() / A64.norm()).item() <= 1e-5
    eye = torch.eye(shape[-1], dtype=torch.float64, device="cuda")
    assert (U.double().mT @ U.double() - eye).abs().max().item() <= 1e-5
    ref = torch.linalg.svdvals(A64.cpu())
    assert ((S.double().cpu() - ref).abs() / ref[..., :1]).max().item() <= 1e-5


@pytest.mark.parametrize("n", [8, 40, 120])
def test_jacobi_keeps_relative_accuracy_on_graded_matrices_on_cuda(n, gen):
    """A = D₁ B D₂ with D spanning 1e-10 … 1: Jacobi's σ keep ~n ε relative accuracy each, on
    both kernel paths, where LAPACK's only have it relative to σ₁. Reference: the CPU Jacobi
    (tested against mpmath in test_svd.py)."""
    B = torch.randn(n, n, generator=gen, dtype=torch.float64)
    d1 = torch.logspace(0, -10, n, dtype=torch.float64)
    d2 = torch.logspace(-10, 0, n, dtype=torch.float64)[torch.randperm(n, generator=gen)]
    A = d1[:, None] * B * d2[None, :]
    _, S, _ = unisub.svd(A, -1, "jacobi")
    _, Sg, _ = unisub.svd(A.cuda(), -1, "jacobi")
    rel = ((Sg.cpu() - S).abs() / S).max().item()
    assert rel <= 1e3 * n * EPS64, f"graded σ relative error {rel:.2e}"


def test_randomized_svd_agrees(gen):
    # Same fixed sketch on both devices: the results agree to rounding on a matrix with a gap.
    Q1 = torch.linalg.qr(torch.randn(300, 10, generator=gen, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(200, 10, generator=gen, dtype=torch.float64))[0]
    A = Q1 @ torch.diag(torch.logspace(0, -1, 10, dtype=torch.float64)) @ Q2.T
    A = A + 1e-6 * torch.randn(300, 200, generator=gen, dtype=torch.float64)
    U, S, Vh = unisub.svd(A, 5, "randomized")
    Ug, Sg, Vhg = unisub.svd(A.cuda(), 5, "randomized")
    assert_close(S, Sg, 1e-10, "randomized S")
    assert_same_vectors(U, Ug, S, "randomized U")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grams_agree(dtype, gen):
    X = torch.randn(6, 20, 30, generator=gen, dtype=dtype)
    for dim in range(3):
        for center in (False, True):
            assert_close(unisub.mode_gram(X, dim, center=center), unisub.mode_gram(X.cuda(), dim, center=center),
                         1e-12, f"mode_gram dim={dim} center={center}")
    G = torch.zeros(30, 30, dtype=torch.float64)
    Gg = G.cuda()
    torch.ops.unisub.gram_update_(G, X, 2)
    torch.ops.unisub.gram_update_(Gg, X.cuda(), 2)
    assert_close(G, Gg, 1e-12, "gram_update_")
    B = torch.randn(5, 40, 4, generator=gen, dtype=dtype)
    A = torch.randn(5, 4, 30, generator=gen, dtype=dtype)
    for center in (False, True):
        # uncentred float32 factors take float32 GEMMs (different summation orders per device)
        tol = 1e-5 if dtype == torch.float32 and not center else 1e-12
        assert_close(unisub.lora_gram(B, A, center=center), unisub.lora_gram(B.cuda(), A.cuda(), center=center),
                     tol, f"lora_gram center={center}")


@pytest.mark.parametrize("method", ["gram", "randomized", "auto"])
def test_mode_svd_and_hosvd_agree(method, gen):
    X = torch.randn(12, 30, 40, generator=gen, dtype=torch.float64)
    for dim in range(3):
        U, S = unisub.mode_svd(X, dim, rank=5, center=True, method=method)
        Ug, Sg = unisub.mode_svd(X.cuda(), dim, rank=5, center=True, method=method)
        assert_close(S, Sg, 1e-10, f"mode_svd[{method}] dim={dim} S")
        assert_same_vectors(U, Ug, S, f"mode_svd[{method}] dim={dim} U")
    core, factors, mean = unisub.hosvd(X, [6, 8, 9], center=True)
    core_g, factors_g, mean_g = unisub.hosvd(X.cuda(), [6, 8, 9], center=True)
    assert_close(mean, mean_g, 1e-12, "hosvd mean")
    # Core and factors agree once the factors' signs agree (the sign rule fixes both).
    for d, (F, Fg) in enumerate(zip(factors, factors_g)):
        assert_close(F, Fg, 1e-8, f"hosvd factor {d}")
    assert_close(core, core_g, 1e-8, "hosvd core")


def test_orthonormalize_agrees(gen):
    A = torch.randn(3, 50, 7, generator=gen, dtype=torch.float64)
    assert_close(unisub.orthonormalize(A), unisub.orthonormalize(A.cuda()), 1e-12, "orthonormalize")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_and_metrics_agree(dtype, gen):
    tol = VALUE_TOL[dtype]
    U = torch.linalg.qr(torch.randn(40, 6, generator=gen, dtype=torch.float64))[0].to(dtype)
    V = torch.linalg.qr(torch.randn(30, 5, generator=gen, dtype=torch.float64))[0].to(dtype)
    G = torch.randn(40, 30, generator=gen, dtype=dtype)
    ops = torch.ops.unisub
    for complement in (False, True):
        assert_close(ops.project(G, U, V, complement), ops.project(G.cuda(), U.cuda(), V.cuda(), complement), tol,
                     f"project complement={complement}")
        assert_close(ops.project(G, U, None, complement), ops.project(G.cuda(), U.cuda(), None, complement),
                     tol, "project one-sided")
    C = ops.coefficients(G, U, V)
    assert_close(C, ops.coefficients(G.cuda(), U.cuda(), V.cuda()), tol, "coefficients")
    assert_close(ops.reconstruct(C, U, V), ops.reconstruct(C.cuda(), U.cuda(), V.cuda()), tol, "reconstruct")
    assert_close(ops.subspace_energy(G, U, V), ops.subspace_energy(G.cuda(), U.cuda(), V.cuda()), tol,
                 "subspace_energy")
    G1, G2 = G.clone(), G.cuda()
    ops.project_(G1, U, V)
    ops.project_(G2, U.cuda(), V.cuda())
    assert_close(G1, G2, tol, "project_")
    Gs, Gsg = [G.clone(), G[:, :20].clone()], [G.cuda(), G[:, :20].cuda()]
    Vs = [V, None]
    ops.project_list_(Gs, [U, U], Vs)
    ops.project_list_(Gsg, [U.cuda(), U.cuda()], [V.cuda(), None])
    for a, b in zip(Gs, Gsg):
        assert_close(a, b, tol, "project_list_")
    U2 = torch.linalg.qr(torch.randn(40, 4, generator=gen, dtype=torch.float64))[0].to(dtype)
    # Random subspaces: no angle near 0, where arccos would amplify rounding.
    assert_close(ops.principal_angles(U, U2), ops.principal_angles(U.cuda(), U2.cuda()), 100 * tol,
                 "principal_angles")
    for metric in ("projection", "geodesic", "max"):
        assert_close(ops.subspace_distance(U, U2, metric), ops.subspace_distance(U.cuda(), U2.cuda(), metric),
                     100 * tol, f"distance {metric}")
    X = torch.randn(8, 40, 30, generator=gen, dtype=dtype)
    assert_close(ops.explained_variance(X, U, 1, True), ops.explained_variance(X.cuda(), U.cuda(), 1, True), tol,
                 "explained_variance")


def test_mixed_devices_are_rejected(gen):
    G = torch.randn(10, 8).cuda()
    U = torch.linalg.qr(torch.randn(10, 3))[0]
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.unisub.project(G, U, None)
