"""svd and orthonormalize against LAPACK/NumPy float64 references.

Bounds (issue #3): reconstruction ‖U diag(S) Vh − A‖/‖A‖ and orthogonality ‖UᵀU − I‖ ≤ 1e-5
(float32 results) and 1e-12 (float64); singular values within the same bound relative to σ_max
(relative to each σ for `jacobi` on graded matrices, against a 40-digit mpmath reference).
"""
import itertools
import os

import mpmath
import numpy as np
import pytest
import torch

import unisub
from references import largest_angle

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
METHODS = ["auto", "gram", "jacobi", "lapack"]


def check_factors(A, U, S, Vh, k=None, method=None):
    tol = TOL[U.dtype]
    m, n = A.shape[-2:]
    k = k or min(m, n)
    # The Gram route squares the spectrum: a σ near 0 comes out as about sqrt(n ε₆₄)·σ_max.
    s_tol = max(tol, (8 * n * torch.finfo(torch.float64).eps) ** 0.5) if method == "gram" else tol
    assert U.shape == (*A.shape[:-2], m, k) and S.shape == (*A.shape[:-2], k) and Vh.shape == (*A.shape[:-2], k, n)
    A64 = A.double().cpu()
    ref = torch.linalg.svdvals(A64)[..., :k]
    scale = ref[..., :1].clamp_min(1e-300)
    assert ((S.double().cpu() - ref).abs() / scale).max() <= s_tol
    assert (S[..., :-1] >= S[..., 1:]).all(), "singular values must be descending"
    eye = torch.eye(k, dtype=torch.float64, device=U.device)
    assert (U.double().mT @ U.double() - eye).abs().max() <= tol
    assert (Vh.double() @ Vh.double().mT - eye).abs().max() <= tol
    if k == min(m, n):
        rec = (U.double() * S.double().unsqueeze(-2)) @ Vh.double()
        assert (rec.cpu() - A64).norm() <= s_tol * k**0.5 * A64.norm().clamp_min(1e-300)
    # Sign rule: the largest-magnitude entry of each column of U is positive.
    pivot = U.gather(-2, U.abs().argmax(-2, keepdim=True))
    assert (pivot >= 0).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 9, 5), (3, 5, 9), (2, 3, 8, 8), (1, 40, 3), (6, 1), (1, 6)], ids=str)
def test_random_batches(method, dtype, shape, device, gen):
    A = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    check_factors(A, *unisub.svd(A, -1, method), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_truncation_keeps_the_leading_triplets(method, device, gen):
    A = torch.randn(3, 12, 7, generator=gen, dtype=torch.float64).to(device)
    U, S, Vh = unisub.svd(A, 3, method)
    check_factors(A, U, S, Vh, k=3, method=method)
    Uf, Sf, Vhf = unisub.svd(A, -1, "lapack")
    torch.testing.assert_close(S, Sf[..., :3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(U, Uf[..., :3], rtol=1e-10, atol=1e-10)  # same sign rule


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["rank-deficient", "repeated", "zero", "huge", "tiny", "column"])
def test_structured_matrices(method, case, device, gen):
    if case == "rank-deficient":
        A = torch.randn(4, 10, 2, generator=gen, dtype=torch.float64) @ torch.randn(4, 2, 6, generator=gen, dtype=torch.float64)
    elif case == "repeated":
        Q1 = torch.linalg.qr(torch.randn(9, 6, generator=gen, dtype=torch.float64))[0]
        Q2 = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0]
        A = (Q1 * torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 0.5], dtype=torch.float64)) @ Q2.T
    elif case == "zero":
        A = torch.zeros(2, 5, 4, dtype=torch.float64)
    elif case == "huge":
        A = 1e30 * torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    elif case == "tiny":
        A = 1e-30 * torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    else:
        A = torch.randn(8, 1, generator=gen, dtype=torch.float64)
    U, S, Vh = unisub.svd(A.to(device), -1, method)
    assert torch.isfinite(U).all() and torch.isfinite(S).all() and torch.isfinite(Vh).all()
    check_factors(A, U.cpu(), S.cpu(), Vh.cpu(), method=method)


def mp_singular_values(A: torch.Tensor):
    with mpmath.workdps(40):
        return np.array([float(x) for x in mpmath.svd_r(mpmath.matrix(A.tolist()), compute_uv=False)])


def test_jacobi_keeps_relative_accuracy_on_graded_matrices(gen):
    """A = D₁ B D₂ with D spanning 1e-10 … 1: every σ, however small, to ~κ(B)·ε relative. The
    constant: over 300 such 12 × 9 matrices the worst relative error was 133·κ(B)·ε (1 in 150 above
    100, which made this test fail now and then); LAPACK's svdvals, which is accurate only relative
    to σ_max, was at least 1.0e4·κ(B)·ε on every one of 40 and typically 5e8."""
    for _ in range(3):
        B = torch.randn(12, 9, generator=gen, dtype=torch.float64)
        d1 = torch.logspace(0, -10, 12, dtype=torch.float64)[torch.randperm(12, generator=gen)]
        d2 = torch.logspace(0, -10, 9, dtype=torch.float64)[torch.randperm(9, generator=gen)]
        A = d1[:, None] * B * d2[None, :]
        exact = np.sort(mp_singular_values(A))[::-1]
        S = unisub.svd(A, -1, "jacobi")[1].numpy()
        kappa = torch.linalg.cond(B).item()
        assert (np.abs(S - exact) / exact).max() <= 1000 * kappa * np.finfo(float).eps, (S, exact)


def test_float32_gram_route_keeps_small_singular_values(gen):
    # σ spanning 1 … 1e-6: a float32 Gram would lose everything below ~3e-4; float64 keeps them.
    Q1 = torch.linalg.qr(torch.randn(300, 8, generator=gen, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))[0]
    sigma = torch.logspace(0, -6, 8, dtype=torch.float64)
    A = ((Q1 * sigma) @ Q2.T).float()
    S = unisub.svd(A, -1, "gram")[1]
    ref = torch.linalg.svdvals(A.double())
    assert ((S.double() - ref).abs() / ref[0]).max() <= 1e-6


def test_randomized_recovers_the_subspace_when_there_is_a_gap(device, gen):
    """Largest principal angle to the exact subspace ≤ 1e-3 rad (float32) with a spectral gap."""
    m, n, k = 400, 300, 10
    U0 = torch.linalg.qr(torch.randn(m, m, generator=gen))[0]
    V0 = torch.linalg.qr(torch.randn(n, n, generator=gen))[0]
    sigma = torch.cat([torch.linspace(10, 5, k), 0.1 * torch.rand(n - k, generator=gen)])
    A = ((U0[:, :n] * sigma) @ V0.T).to(device)
    U, S, Vh = unisub.svd(A, k, "randomized")
    assert largest_angle(U0[:, :k], U) <= 1e-3
    torch.testing.assert_close(S.cpu(), sigma[:k], rtol=1e-4, atol=1e-4)


def test_randomized_on_a_flat_spectrum_reports_its_error(gen, capsys):
    """No gap: the sketch is not the exact subspace, and this test prints by how much."""
    A = torch.randn(300, 200, generator=gen)
    U, S, _ = unisub.svd(A, 10, "randomized")
    exact = torch.linalg.svd(A.double(), full_matrices=False)
    angles = torch.linalg.svdvals(exact.U[:, :10].T @ U.double()).clamp(max=1).arccos()
    with capsys.disabled():
        print(f"\n[flat spectrum 300x200, k=10] randomized: largest principal angle {angles.max():.3f} rad, "
              f"max relative σ error {((S.double() - exact.S[:10]) / exact.S[:10]).abs().max():.2e}")
    assert (S.double() <= exact.S[:10] * (1 + 1e-5)).all(), "a sketch cannot overestimate σ"


def test_auto_matches_lapack_accuracy_and_falls_back_on_ill_conditioning(gen):
    Q1 = torch.linalg.qr(torch.randn(50, 10, generator=gen, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))[0]
    A = ((Q1 * torch.logspace(0, -12, 10, dtype=torch.float64)) @ Q2.T).float()
    U, S, Vh = unisub.svd(A)
    Ul, Sl, Vhl = unisub.svd(A, -1, "lapack")
    assert ((S - Sl).abs() / Sl[0]).max() <= 1e-6


# ---- the fused CPU kernel of the Gram route (float32 and narrower input, methods auto and gram) ----
# Bounds, against torch.linalg.svd of the float64 input: the general contract of check_factors
# (reconstruction and ‖UᵀU − I‖, ‖VᵀV − I‖ ≤ 1e-5), and singular values within 3e-7·σ_max
# (2.5 ε₃₂: float32 LAPACK's own scale; the float64 Gram adds only ε₆₄‖A‖²/σ, which is below that
# for every σ ≥ 1e-7·σ_max, the ratio under which auto hands a matrix to LAPACK).
FAST_S_TOL = 3e-7


def relative_s_error(A, S):
    ref = torch.linalg.svdvals(A.double())[..., : S.shape[-1]]
    return ((S.double() - ref).abs() / ref[..., :1].clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("method", ["auto", "gram"])
@pytest.mark.parametrize("shape", [(6, 64, 64), (3, 4096, 16), (4, 33, 17), (3, 17, 33), (2, 16, 300), (5, 7, 7)],
                         ids=str)
def test_cpu_fused_gram_route_random(method, shape, gen):
    A = torch.randn(shape, generator=gen)
    U, S, Vh = unisub.svd(A, -1, method)
    check_factors(A, U, S, Vh)
    assert relative_s_error(A, S) <= FAST_S_TOL


@pytest.mark.parametrize("method", ["auto", "gram"])
@pytest.mark.parametrize("shape", [(2, 300, 150), (1, 129, 200), (3, 129, 129)], ids=str)
def test_cpu_gram_route_past_the_fused_kernels_size(method, shape, gen):
    # min(m, n) > 128: auto takes float32 LAPACK (whose σ carry ~n·ε₃₂·σ_max, so the 1e-5
    # bound) and gram the batched float64-Gram route (FAST_S_TOL, as below the crossover): the
    # fused kernel's unblocked tridiagonalisation loses to both there.
    A = torch.randn(shape, generator=gen)
    U, S, Vh = unisub.svd(A, -1, method)
    check_factors(A, U, S, Vh)
    assert relative_s_error(A, S) <= (1e-5 if method == "auto" else FAST_S_TOL)


@pytest.mark.parametrize("method", ["auto", "gram"])
def test_cpu_fused_gram_route_truncated(method, gen):
    A = torch.randn(4, 50, 20, generator=gen)
    U, S, Vh = unisub.svd(A, 5, method)
    Uf, Sf, Vhf = unisub.svd(A, -1, method)
    torch.testing.assert_close((U, S, Vh), (Uf[..., :5], Sf[..., :5], Vhf[..., :5, :]), rtol=0, atol=0)
    check_factors(A, U, S, Vh, k=5)


def graded(gen, m, n, lo):
    Q1 = torch.linalg.qr(torch.randn(m, n, generator=gen, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    return ((Q1 * torch.logspace(0, lo, n, dtype=torch.float64)) @ Q2.T).float()


def test_cpu_fused_auto_falls_back_per_matrix(gen):
    """σ down to 1e-6 σ_max: the Gram route keeps them (relative-to-σ_max error ≤ 1e-6 would be lost
    by a float32 Gram); σ down to 1e-12: that matrix alone goes to LAPACK, and gets exactly
    LAPACK's answer, while its neighbours in the batch keep the Gram route's."""
    A = torch.stack([graded(gen, 60, 12, -3), graded(gen, 60, 12, -12), graded(gen, 60, 12, -6)])
    U, S, Vh = unisub.svd(A)
    for i in range(3):
        Ui, Si, Vhi = unisub.svd(A[i])
        torch.testing.assert_close((U[i], S[i], Vh[i]), (Ui, Si, Vhi), rtol=0, atol=0)
    Ul, Sl, Vhl = unisub.svd(A[1], -1, "lapack")
    torch.testing.assert_close((U[1], S[1], Vh[1]), (Ul, Sl, Vhl), rtol=0, atol=0)
    for i in (0, 2):
        check_factors(A[i], U[i], S[i], Vh[i])
        assert relative_s_error(A[i], S[i]) <= FAST_S_TOL
    # 1e-4 > σ_min/σ_max ≥ 1e-7: U is re-orthonormalised (A V / σ alone would be off by ~ε₆₄·cond²).
    B = graded(gen, 300, 10, -6.5)
    U, S, Vh = unisub.svd(B)
    check_factors(B, U, S, Vh)
    assert relative_s_error(B, S) <= FAST_S_TOL


@pytest.mark.parametrize("method", ["auto", "gram"])
def test_cpu_fused_rank_deficient_and_repeated(method, gen):
    """Exact zero σ (rank 3 of 9) and a triple σ: bases stay orthonormal (the U columns of σ = 0 are
    completed, on the Gram route; auto hands the rank-deficient matrices to LAPACK)."""
    L = torch.randn(5, 40, 3, generator=gen, dtype=torch.float64)
    R = torch.randn(5, 3, 9, generator=gen, dtype=torch.float64)
    A = (L @ R).float()
    U, S, Vh = unisub.svd(A, -1, method)
    check_factors(A, U, S, Vh, method="gram")
    Q1 = torch.linalg.qr(torch.randn(4, 30, 8, generator=gen, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(4, 8, 8, generator=gen, dtype=torch.float64))[0]
    sigma = torch.tensor([3.0, 3.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    B = ((Q1 * sigma) @ Q2.mT).float()
    U, S, Vh = unisub.svd(B, -1, method)
    check_factors(B, U, S, Vh)
    assert relative_s_error(B, S) <= FAST_S_TOL


@pytest.mark.parametrize("method", ["auto", "gram"])
@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 5, 7), (4096, 1), (1, 50)], ids=str)
def test_cpu_fused_zero_matrix_and_vectors(method, shape, gen):
    Z = torch.zeros(shape)
    U, S, Vh = unisub.svd(Z, -1, method)
    assert (S == 0).all()
    check_factors(Z, U, S, Vh)
    A = torch.randn(shape, generator=gen)
    U, S, Vh = unisub.svd(A, -1, method)
    check_factors(A, U, S, Vh)
    assert relative_s_error(A, S) <= FAST_S_TOL


@pytest.mark.parametrize("method", ["auto", "gram"])
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_float64_extreme_scales_do_not_take_the_float32_kernel(method, scale, gen):
    """float64 input is never the fused kernel's (its range squared would not fit): it keeps the
    scaled batched route (gram) or LAPACK (auto), with float64 accuracy."""
    A = scale * torch.randn(3, 40, 6, generator=gen, dtype=torch.float64)
    U, S, Vh = unisub.svd(A, -1, method)
    assert U.dtype == torch.float64
    check_factors(A, U, S, Vh, method=method)


def test_cpu_fused_results_do_not_depend_on_threads_or_batch(gen):
    A = torch.randn(9, 70, 24, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = unisub.svd(A)
    finally:
        torch.set_num_threads(threads)
    many = unisub.svd(A)
    alone = unisub.svd(A[4])
    for a, b, c in zip(one, many, alone):
        assert torch.equal(a, b) and torch.equal(a[4], c)
    half = A.to(torch.bfloat16)
    torch.testing.assert_close(unisub.svd(half), unisub.svd(half.float()), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["lapack", "jacobi", "gram"])
@pytest.mark.parametrize("rank", [-1, 2])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 4, 4)], ids=str)
def test_gradcheck(method, rank, shape, device, gen):
    A = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    for out in range(3):
        assert torch.autograd.gradcheck(lambda A: unisub.svd(A, rank, method)[out], (A,))


def test_gradient_with_repeated_singular_values_is_finite_for_invariant_losses(gen):
    """Exactly repeated σ: the coupling term is 0/0; we drop it (exact for basis-invariant losses)."""
    Q = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0]
    A = (Q * torch.tensor([2.0, 2.0, 1.0, 1.0, 0.5, 0.5], dtype=torch.float64)) @ Q.T
    A.requires_grad_()
    U, S, Vh = unisub.svd(A, 2)
    (U @ U.mT).sum().backward()  # the projector onto the top-2 subspace: basis-invariant
    assert torch.isfinite(A.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_return_float32(dtype, gen):
    A = torch.randn(3, 6, 4, generator=gen).to(dtype)
    U, S, Vh = unisub.svd(A)
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    check_factors(A.float(), U, S, Vh)


def test_opcheck(device, gen):
    for method, rank in itertools.product(METHODS + ["randomized"], [-1, 2]):
        if method == "randomized" and rank == -1:
            continue
        A = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64).to(device)
        torch.library.opcheck(torch.ops.unisub.svd.default, (A, rank, method))
    A = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.unisub.svd.default, (A, -1, "lapack"))
    torch.library.opcheck(torch.ops.unisub.orthonormalize.default, (A.detach(),))


def test_torch_compile(device, gen):
    f = torch.compile(lambda A: unisub.svd(A, 2)[1].sum() + unisub.orthonormalize(A).sum(), fullgraph=True)
    A = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(f(A), unisub.svd(A, 2)[1].sum() + unisub.orthonormalize(A).sum())


@pytest.mark.parametrize("shape", [(7, 3), (2, 9, 4), (5, 5)], ids=str)
def test_orthonormalize(shape, device, gen):
    A = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    Q = unisub.orthonormalize(A)
    k = shape[-1]
    assert (Q.mT @ Q - torch.eye(k, dtype=torch.float64, device=device)).abs().max() <= 1e-13
    # span(A) ⊆ span(Q): projecting A onto Q loses nothing
    assert (Q @ (Q.mT @ A) - A).abs().max() <= 1e-12 * A.abs().max()


def test_orthonormalize_completes_rank_deficient_input(gen):
    A = torch.randn(8, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 4, generator=gen, dtype=torch.float64)
    A[:, 3] = 0
    Q = unisub.orthonormalize(A)
    assert (Q.mT @ Q - torch.eye(4, dtype=torch.float64)).abs().max() <= 1e-13
    assert (Q @ (Q.mT @ A) - A).abs().max() <= 1e-12 * A.abs().max()


ERRORS = [
    (lambda: unisub.svd(torch.randn(5)), r"A must have at least 2 dimensions"),
    (lambda: unisub.svd(torch.randn(0, 3, 3)), r"A must hold at least one matrix"),
    (lambda: unisub.svd(torch.randn(3, 0)), r"at least one row and one column"),
    (lambda: unisub.svd(torch.randn(4, 3), 4), r"rank must be -1 .* or in \[1, 3\].*got 4"),
    (lambda: unisub.svd(torch.randn(4, 3), 0), r"rank must be -1"),
    (lambda: unisub.svd(torch.randn(4, 3), -1, "qr"), r"method must be one of .*got 'qr'"),
    (lambda: unisub.svd(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])), r"A contains NaN or infinity"),
    (lambda: unisub.svd(torch.ones(3, 3, dtype=torch.int32)), r"A must be float16, bfloat16, float32 or float64"),
    (lambda: unisub.orthonormalize(torch.randn(3, 5)), r"must have k <= m"),
]


@pytest.mark.parametrize("call,pattern", ERRORS)
def test_errors(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_fused_cpu_kernel_copies_agree(gen, tmp_path):
    """The fused CPU route exists twice, baseline x86-64 and AVX2 + FMA (picked at run time);
    ATEN_CPU_CAPABILITY=default selects the baseline copy in a fresh process. The two differ only
    by rounding (FMA): σ within 8 ε₃₂·σ_max, U and Vh within 1e-4 (float32 vectors of σ gaps ≥ 1e-2)."""
    import subprocess
    import sys

    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    script = (
        "import sys, torch, unisub\n"
        f"g = torch.Generator().manual_seed({seed})\n"
        "A = [torch.randn(6, 64, 64, generator=g), torch.randn(4, 500, 16, generator=g)]\n"
        "torch.save([unisub.svd(a, -1, 'auto') for a in A], sys.argv[1])\n"
    )
    results = {}
    for cap in ("default", None):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        out = tmp_path / f"{cap}.pt"
        subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, timeout=300)
        results[cap] = torch.load(out)
    eps32 = torch.finfo(torch.float32).eps
    for (U1, S1, Vh1), (U2, S2, Vh2) in zip(results["default"], results[None]):
        assert ((S1 - S2).abs() <= 8 * eps32 * S1[:, :1]).all()
        gaps = (S1[:, :-1] - S1[:, 1:]).min().item()
        if gaps >= 1e-2 * S1.max().item():
            assert (U1 - U2).abs().max() <= 1e-4 and (Vh1 - Vh2).abs().max() <= 1e-4
