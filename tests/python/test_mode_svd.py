"""mode_svd, hosvd and lora_gram against dense float64 references (explicit unfoldings, explicit
ΔW) and against tensorly's HOSVD. Bounds: squared singular values ≤ 1e-12·σ_max² (float64 Gram route),
subspaces by principal angles; float32 randomized ≤ 1e-3 rad with a spectral gap."""
import numpy as np
import pytest
import tensorly
import tensorly.decomposition
import torch

import unisub
from references import largest_angle, unfold


def dense_mode_svd(X, dim, center):
    X = X.double().cpu()
    if center:
        X = X - X.mean(0, keepdim=True)
    U, S, _ = torch.linalg.svd(unfold(X, dim), full_matrices=False)
    return U, S


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(6, 5, 4), (4, 3, 5, 2), (9, 2)], ids=str)
def test_gram_route_matches_dense_svd(shape, center, device, gen):
    X = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    for dim in range(len(shape)):
        U, S = unisub.mode_svd(X, dim, center=center, method="gram")
        Ur, Sr = dense_mode_svd(X, dim, center)
        full = min(X.shape[dim], X.numel() // X.shape[dim])
        assert U.shape == (X.shape[dim], full) and S.shape == (full,)
        # The Gram route's guarantee is on σ² (eigenvalues of the Gram): |σ² − σ_ref²| ≲ ε·σ_max².
        assert (S.cpu() ** 2 - Sr[:full] ** 2).abs().max() <= 1e-12 * Sr[0] ** 2
        eye = torch.eye(full, dtype=torch.float64)
        assert (U.cpu().T @ U.cpu() - eye).abs().max() <= 1e-12  # completed where rank-deficient
        # Each singular direction with a separated σ matches the dense one up to sign.
        gaps = torch.cat([Sr[:1] * 0 + 1, (Sr[1:full] - Sr[:full - 1]).abs()]).clamp(max=1)
        sep = (gaps > 1e-6) & (torch.cat([(Sr[:full - 1] - Sr[1:full]).abs(), Sr[-1:] * 0 + 1]) > 1e-6) & (Sr[:full] > 1e-8 * Sr[0])
        dots = (U.cpu() * Ur[:, :full]).sum(0).abs()
        assert (dots[sep] > 1 - 1e-9).all()


def low_rank_stack(gen, M=40, d=600, w=30, k=6, noise=1e-3, dtype=torch.float32):
    basis = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]
    coeffs = torch.randn(M, k, w, generator=gen, dtype=torch.float64) * torch.linspace(5, 1, k, dtype=torch.float64)[:, None]
    X = (basis @ coeffs + noise * torch.randn(M, d, w, generator=gen, dtype=torch.float64)).movedim(1, 2)
    return X.to(dtype), basis  # [M, w, d]: the shared basis lives in mode 2


@pytest.mark.parametrize("center", [False, True])
def test_randomized_sketch_finds_the_subspace(center, device, gen):
    X, basis = low_rank_stack(gen)
    U, S = unisub.mode_svd(X.to(device), 2, rank=6, center=center, method="randomized")
    Ur, Sr = dense_mode_svd(X, 2, center)
    assert largest_angle(U, Ur[:, :6]) <= 1e-3
    assert ((S.double().cpu() - Sr[:6]).abs() / Sr[0]).max() <= 1e-4


def test_auto_sketches_large_modes_and_energy_is_relative_to_the_whole(gen):
    X, _ = low_rank_stack(gen, d=1024)
    U, S = unisub.mode_svd(X, 2, rank=6, energy=0.5, center=True)  # auto → sketch (1024 ≥ 512)
    _, Sr = dense_mode_svd(X, 2, True)
    cum = (Sr**2).cumsum(0) / (Sr**2).sum()
    assert S.shape[0] == int((cum < 0.5).sum()) + 1


@pytest.mark.parametrize("tau", [0.3, 0.9, 0.999, 1.0])
def test_energy_threshold_picks_the_smallest_rank(tau, gen):
    X = torch.randn(12, 10, 7, generator=gen, dtype=torch.float64)
    U, S = unisub.mode_svd(X, 1, energy=tau, center=True)
    _, Sr = dense_mode_svd(X, 1, True)
    cum = (Sr**2).cumsum(0) / (Sr**2).sum()
    expected = int((cum < tau - 1e-12).sum()) + 1
    assert S.shape[0] == expected and U.shape == (10, expected)
    U2, S2 = unisub.mode_svd(X, 1, rank=2, energy=tau, center=True)
    assert S2.shape[0] == min(2, expected)


def test_large_offset_is_centred_exactly(gen):
    X = 1e4 + torch.randn(30, 8, 6, generator=gen, dtype=torch.float64)
    _, S = unisub.mode_svd(X, 1, center=True)
    _, Sr = dense_mode_svd(X, 1, True)
    assert (S - Sr).abs().max() <= 1e-9 * Sr[0]


@pytest.mark.parametrize("center", [False, True])
def test_hosvd_reconstructs_within_the_discarded_energy(center, device, gen):
    X = torch.randn(7, 6, 5, generator=gen, dtype=torch.float64).to(device)
    core, factors, mean = unisub.hosvd(X, [-1, 4, 3], center=center)
    assert core.shape == (7, 4, 3) and [f.shape for f in factors] == [(7, 7), (6, 4), (5, 3)]
    rec = mean + torch.einsum("abc,ia,jb,kc->ijk", core, *factors)
    Xc = X - (X.mean(0) if center else 0)
    discarded = sum((dense_mode_svd(X, j, center)[1][r:] ** 2).sum() for j, r in [(1, 4), (2, 3)])
    assert ((rec - X).norm().cpu() ** 2) <= discarded * (1 + 1e-10)
    full_core, full_factors, _ = unisub.hosvd(X, [-1, -1, -1], center=center)
    rec_full = mean + torch.einsum("abc,ia,jb,kc->ijk", full_core, *full_factors)
    assert (rec_full - X).abs().max() <= 1e-12 * Xc.abs().max()


def tensorly_hosvd(X, ranks):
    tensorly.set_backend("numpy")
    # Tucker with init="svd" and no iterations is the plain truncated HOSVD.
    core, factors = tensorly.decomposition.tucker(X.numpy(), rank=ranks, init="svd", n_iter_max=0)
    return torch.from_numpy(tensorly.tucker_to_tensor((core, factors))), [torch.from_numpy(f) for f in factors]


def test_hosvd_matches_tensorly(gen):
    X = torch.randn(8, 7, 6, generator=gen, dtype=torch.float64)
    # One truncated mode: sequential truncation and plain HOSVD are the same algorithm.
    core, factors, _ = unisub.hosvd(X, [8, 3, 6])
    theirs, tl_factors = tensorly_hosvd(X, [8, 3, 6])
    ours = torch.einsum("abc,ia,jb,kc->ijk", core, *factors)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert largest_angle(factors[1], tl_factors[1]) <= 1e-8
    # Several: both obey the HOSVD bound ‖X − X̂‖² ≤ Σ_j (energy discarded in mode j).
    ranks = [8, 3, 4]
    core, factors, _ = unisub.hosvd(X, ranks)
    ours = torch.einsum("abc,ia,jb,kc->ijk", core, *factors)
    theirs, _ = tensorly_hosvd(X, ranks)
    bound = sum((dense_mode_svd(X, j, False)[1][r:] ** 2).sum() for j, r in enumerate(ranks))
    assert (ours - X).norm() ** 2 <= bound * (1 + 1e-10)
    assert (theirs - X).norm() ** 2 <= bound * (1 + 1e-10)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lora_gram_matches_dense_deltas(center, dtype, device, gen):
    M, m, r, n = 9, 12, 3, 10
    B = torch.randn(M, m, r, generator=gen, dtype=dtype).to(device)
    A = torch.randn(M, r, n, generator=gen, dtype=dtype).to(device)
    K = unisub.lora_gram(B, A, center)
    D = (B.double() @ A.double()).reshape(M, -1).cpu()
    if center:
        D = D - D.mean(0)
    ref = D @ D.T
    bound = (1e-13 if dtype == torch.float64 else 1e-6) * (D.norm(dim=1)[:, None] * D.norm(dim=1)[None, :] + ref.abs().max())
    assert ((K.double().cpu() - ref).abs() <= bound).all()
    assert torch.equal(K, K.T)


def test_lora_gram_tiles_many_models(gen):
    B = torch.randn(150, 20, 16, generator=gen, dtype=torch.float64)  # 1024/16 = 64 models per tile
    A = torch.randn(150, 16, 18, generator=gen, dtype=torch.float64)
    D = (B @ A).reshape(150, -1)
    torch.testing.assert_close(unisub.lora_gram(B, A), D @ D.T, rtol=1e-12, atol=1e-10)


# CPU tiles are 512 rows × 1024 columns of BᵀB and AAᵀ and 64-row strips on the diagonal, in whole
# models: these shapes give row panels, column chunks and strips with remainders (r = 16: 32 × 64
# models, strips of 4; r = 5: 102 × 204, strips of 12), ranks that divide none of them, and a rank
# past a tile's rows (r = 300: one model per tile and strip).
@pytest.mark.parametrize("M,r", [(150, 16), (230, 5), (5, 300), (1, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lora_gram_tile_shapes(M, r, dtype, gen):
    m, n = 11, 13
    B = torch.randn(M, m, r, generator=gen, dtype=torch.float64)
    A = torch.randn(M, r, n, generator=gen, dtype=torch.float64)
    K = unisub.lora_gram(B.to(dtype), A.to(dtype))
    assert torch.equal(K, K.T)
    D = (B @ A).reshape(M, -1)
    ref = D @ D.T
    if dtype == torch.float64:
        torch.testing.assert_close(K, ref, rtol=1e-12, atol=1e-12 * ref.abs().max().item())
    else:  # the float32 route's bound (test_lora_gram_float32_error_bound), on the rounded factors
        u = 2.0 ** -24
        gamma = lambda k: k * u / (1 - k * u)
        B32, A32 = B.float().double(), A.float().double()
        D32 = (B32 @ A32).reshape(M, -1)
        ref32 = D32 @ D32.T
        s = (B32.norm(dim=1) * A32.norm(dim=2)).sum(1)
        bound = (gamma(m) + gamma(n) + 2 * u) * s[:, None] * s[None, :] + u * ref32.abs()
        assert ((K.double() - ref32).abs() <= bound).all()


# The CPU route converts factors stored in another dtype a panel at a time (no whole copy): the
# result must be bit for bit the one from factors converted beforehand (the conversion is exact for
# 16-bit factors and the tiles run the same GEMMs in the same order), whatever the thread count and
# for shapes whose tiles share column panels (M·r > 1024) and row panels of remainders.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,r", [(150, 16), (230, 5), (5, 300)])
def test_lora_gram_16_bit_factors_equal_their_float32_copies(dtype, M, r, gen):
    B = torch.randn(M, 11, r, generator=gen).to(dtype)
    A = torch.randn(M, r, 13, generator=gen).to(dtype)
    threads = torch.get_num_threads()
    try:
        for t in (1, max(2, threads)):
            torch.set_num_threads(t)
            assert torch.equal(unisub.lora_gram(B, A), unisub.lora_gram(B.float(), A.float()))
            # centred: float64 GEMMs, each panel converted from 16 bits to float64
            assert torch.equal(unisub.lora_gram(B, A, True), unisub.lora_gram(B.double(), A.double(), True).float())
    finally:
        torch.set_num_threads(threads)


def test_lora_gram_centred_float32_factors_equal_their_float64_copies(gen):
    B = torch.randn(150, 20, 16, generator=gen)
    A = torch.randn(150, 16, 18, generator=gen)
    assert torch.equal(unisub.lora_gram(B, A, True), unisub.lora_gram(B.double(), A.double(), True).float())
    # a transposed view (the analysis engine passes one) is read in place
    Bt = B.transpose(1, 2).contiguous()
    assert torch.equal(unisub.lora_gram(Bt.transpose(1, 2), A), unisub.lora_gram(B, A))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # float16, even widths: the AMX tiles where present
def test_lora_gram_same_result_on_any_thread_count(dtype, gen):
    # The CPU route shares its tiles among the threads as they come free; each K entry is still
    # computed by one tile in a fixed order, so the thread count must not change a bit.
    B = torch.randn(150, 40, 16, generator=gen).to(dtype)
    A = torch.randn(150, 16, 30, generator=gen).to(dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = unisub.lora_gram(B, A)
        torch.set_num_threads(max(2, threads))
        many = unisub.lora_gram(B, A)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_lora_gram_16_bit_with_onednn_switched_off(gen):
    # the AMX tiles are libunisub's own kernel (they once ran through oneDNN's micro-kernels, which
    # threw once it was switched off): switched off mid-process, lora_gram gives the same bits
    B = torch.randn(60, 64, 16, generator=gen).half()
    A = torch.randn(60, 16, 48, generator=gen).half()
    on = unisub.lora_gram(B, A)
    with torch.backends.mkldnn.flags(enabled=False):
        off = unisub.lora_gram(B, A)
    D = (B.double() @ A.double()).reshape(60, -1)
    ref = D @ D.T
    scale = ref.diagonal().sqrt().outer(ref.diagonal().sqrt())
    for K in (on, off):
        assert ((K.double() - ref).abs() / scale).max() < 1e-5
    assert torch.equal(off, on)


def test_lora_gram_16_bit_between_torch_own_tile_kernels(gen):
    # torch's bfloat16 attention runs oneDNN's tile kernels (on a CPU with AMX), which keep the
    # configuration they last loaded per thread; ours loads its own in between: each must still
    # give the same bits as when it runs alone
    q, k, v = (torch.randn(2, 4, 256, 64, generator=gen).bfloat16() for _ in range(3))
    attention = torch.nn.functional.scaled_dot_product_attention
    B = torch.randn(60, 64, 16, generator=gen).half()
    A = torch.randn(60, 16, 48, generator=gen).half()
    first, K = attention(q, k, v), unisub.lora_gram(B, A)
    assert torch.equal(attention(q, k, v), first)
    assert torch.equal(unisub.lora_gram(B, A), K)
    reference = attention(q.float(), k.float(), v.float())
    assert (first.float() - reference).abs().max() < 0.05


def amx_route_error(B, A):
    """lora_gram(B, A) of 16-bit factors: its error against float64, and the AMX route's bound
    (γ_8m + γ_8n + 2u)·sᵢsⱼ + u|Kᵢⱼ| (sᵢ = Σ_k ‖B_i[:, k]‖·‖A_i[k, :]‖), and the float64 K."""
    M, m, _ = B.shape
    n = A.shape[2]
    K = unisub.lora_gram(B, A)
    assert torch.equal(K, K.T)
    Bd, Ad = B.double(), A.double()
    D = (Bd @ Ad).reshape(M, -1)
    ref = D @ D.T
    u = 2.0 ** -24
    gamma = lambda k: k * u / (1 - k * u)
    s = (Bd.norm(dim=1) * Ad.norm(dim=2)).sum(1)
    bound = (gamma(8 * m) + gamma(8 * n) + 2 * u) * s[:, None] * s[None, :] + u * ref.abs()
    return (K.double() - ref).abs(), bound, ref


# Even widths of 16-bit factors take the AMX tiles where the CPU has them (exact bfloat16 hi/lo
# products, float32 sums; docs/decompositions.md): within that route's bound (8k roundings a sum),
# on tile walks with remainders, and as accurate as the float32 GEMMs on the diagonal.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,r,m,n", [(150, 16, 64, 130), (230, 5, 34, 18), (5, 300, 20, 22)])
def test_lora_gram_16_bit_even_widths(dtype, M, r, m, n, gen):
    B = torch.randn(M, m, r, generator=gen).to(dtype)
    A = torch.randn(M, r, n, generator=gen).to(dtype)
    err, bound, ref = amx_route_error(B, A)
    assert (err <= bound).all(), f"worst error / bound {(err / bound).max():.3g}"
    # and far inside it: a float32 GEMM's size of error relative to the diagonal
    assert (err / ref.diagonal().sqrt().outer(ref.diagonal().sqrt())).max() < 1e-5


def test_lora_gram_16_bit_random_shapes(gen):
    # The tile kernel's edges on shapes drawn at random: rows past whole 32-row groups, columns past
    # whole 16-column blocks, inner dimensions past whole 32-deep tiles, ranks that do not divide
    # 16, models of scales over four decades; every one within the route's bound (as above).
    for trial in range(24):
        M = int(torch.randint(1, 60, (1,), generator=gen))
        r = int(torch.randint(1, 24, (1,), generator=gen))
        m, n = (2 * int(torch.randint(1, 160, (1,), generator=gen)) for _ in range(2))
        dtype = (torch.float16, torch.bfloat16)[trial % 2]
        scale = torch.logspace(-2, 2, M)[torch.randperm(M, generator=gen)]
        B = (torch.randn(M, m, r, generator=gen) * scale[:, None, None]).to(dtype)
        A = torch.randn(M, r, n, generator=gen).to(dtype)
        err, bound, _ = amx_route_error(B, A)
        assert (err <= bound).all(), f"M {M} r {r} m {m} n {n} {dtype}: worst error / bound {(err / bound).max():.3g}"


def test_lora_gram_float32_error_bound(gen):
    # Uncentred float32 factors take float32 GEMMs. Rigorous bound from |fl(xᵀy) − xᵀy| ≤ γ_k‖x‖‖y‖
    # on every entry of BᵀB (k = m) and AAᵀ (k = n), summed over each r × r block:
    # |K̂ᵢⱼ − Kᵢⱼ| ≤ (γ_m + γ_n + 2u)·sᵢsⱼ + u|Kᵢⱼ|, sᵢ = Σ_k ‖B_i[:, k]‖·‖A_i[k, :]‖ (≥ ‖ΔWᵢ‖_F).
    # A shared part makes every Kᵢⱼ comparable to ‖ΔWᵢ‖‖ΔWⱼ‖, so a wrong or missing block is far
    # outside the bound; scales over 6 decades test that the bound is per pair.
    M, m, r, n = 40, 700, 8, 500
    B = (torch.randn(1, m, r, generator=gen) + torch.randn(M, m, r, generator=gen)) * torch.logspace(-3, 3, M)[:, None, None]
    A = torch.randn(1, r, n, generator=gen) + torch.randn(M, r, n, generator=gen)
    K = unisub.lora_gram(B, A)
    assert K.dtype == torch.float32 and torch.equal(K, K.T)
    D = (B.double() @ A.double()).reshape(M, -1)
    ref = D @ D.T
    u = 2.0 ** -24
    gamma = lambda k: k * u / (1 - k * u)
    s = (B.double().norm(dim=1) * A.double().norm(dim=2)).sum(1)
    bound = (gamma(m) + gamma(n) + 2 * u) * s[:, None] * s[None, :] + u * ref.abs()
    err = (K.double() - ref).abs()
    assert (err <= bound).all(), f"worst error / bound {(err / bound).max():.3g}"


def test_lora_gram_centred_float32_keeps_float64_accuracy(gen):
    # Deltas sharing a large common part: double centring subtracts nearly equal numbers, so
    # center=True computes in float64 whatever the input; a float32 K would lose every digit here.
    M, m, r, n = 12, 300, 4, 200
    B = (torch.randn(1, m, r, generator=gen) + 1e-3 * torch.randn(M, m, r, generator=gen)).float()
    A = (torch.randn(1, r, n, generator=gen) + 1e-3 * torch.randn(M, r, n, generator=gen)).float()
    K = unisub.lora_gram(B, A, center=True)
    D = (B.double() @ A.double()).reshape(M, -1)
    D = D - D.mean(0)
    ref = D @ D.T
    # float64 GEMMs and centring, then one rounding to the float32 output
    assert (K.double() - ref).abs().max() <= 4 * 2.0 ** -24 * ref.abs().max()


ERRORS = [
    (lambda: unisub.mode_svd(torch.randn(3, 4, 5), 1, rank=5), r"rank must be -1 or in \[1, 4\]"),
    (lambda: unisub.mode_svd(torch.randn(3, 4, 5), 1, energy=1.5), r"energy must be 0 \(off\) or in \(0, 1\]"),
    (lambda: unisub.mode_svd(torch.randn(3, 4, 5), 1, method="jacobi"), r"method must be 'auto', 'gram' or 'randomized'"),
    (lambda: unisub.mode_svd(torch.randn(3, 4, 5), 1, method="randomized"), r"needs a rank"),
    (lambda: unisub.mode_svd(torch.randn(3, 4, 5), 3), r"dim must be in \[-3, 2\]"),
    (lambda: unisub.mode_svd(torch.full((3, 4), float("inf")), 1), r"X contains NaN or infinity"),
    (lambda: unisub.hosvd(torch.randn(3, 4, 5), [2, 2]), r"one rank per mode of X \(3"),
    (lambda: unisub.hosvd(torch.randn(3, 4, 5), [2, 9, 2]), r"ranks\[1\] must be -1 .* or in \[1, 4\], got 9"),
    (lambda: unisub.lora_gram(torch.randn(3, 4, 2), torch.randn(4, 2, 5)), r"same number of models, got 3 \(B\) and 4 \(A\)"),
    (lambda: unisub.lora_gram(torch.randn(3, 4, 2), torch.randn(3, 3, 5)), r"LoRA rank must agree"),
    (lambda: unisub.lora_gram(torch.randn(3, 4), torch.randn(3, 3, 5)), r"B must have shape \[M, m, r\]"),
    (lambda: unisub.lora_gram(torch.randn(3, 4, 2), torch.randn(3, 2, 5, dtype=torch.float64)), r"same dtype"),
    (lambda: unisub.lora_gram(torch.randn(0, 4, 2), torch.randn(0, 2, 5)), r"at least one model"),
]


@pytest.mark.parametrize("call,pattern", ERRORS)
def test_errors(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_opcheck(device, gen):
    X = torch.randn(5, 6, 4, generator=gen, dtype=torch.float64).to(device)
    for args in [(X, 1, -1, 0.0, True, "gram"), (X, 2, 2, 0.0, False, "randomized"), (X, 0, 3, 0.0, True, "auto")]:
        torch.library.opcheck(torch.ops.unisub.mode_svd.default, args)
    torch.library.opcheck(torch.ops.unisub.hosvd.default, (X, [-1, 3, 2], True))
    B = torch.randn(4, 6, 2, generator=gen, dtype=torch.float64).to(device)
    A = torch.randn(4, 2, 5, generator=gen, dtype=torch.float64).to(device)
    torch.library.opcheck(torch.ops.unisub.lora_gram.default, (B, A, True))


def test_compile_with_data_dependent_rank(device, gen):
    X = torch.randn(6, 8, 5, generator=gen, dtype=torch.float64).to(device)

    def leading_energy(X):
        U, S = unisub.mode_svd(X, 1, energy=0.8, center=True)
        return (S**2).sum(), U.shape[1]

    compiled = torch.compile(leading_energy, fullgraph=True)
    torch.testing.assert_close(compiled(X)[0], leading_energy(X)[0])
    assert compiled(X)[1] == leading_energy(X)[1]


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("scales", [(1e18, 1e-18), (1e-18, 1e18)])
def test_lora_gram_unbalanced_float32_factors_do_not_overflow(scales, center, gen):
    # ΔW = B A is O(1) although B and A are not: BᵀB (or AAᵀ) alone would overflow float32
    # (m·1e36 > 3.4e38) and K came out with infinite diagonal. The factors are scaled by powers of
    # two first, which keeps the float32 rounding and K exact.
    M, m, r, n = 3, 1024, 4, 1024
    B = torch.randn(M, m, r, generator=gen) * scales[0]
    A = torch.randn(M, r, n, generator=gen) * scales[1]
    K = unisub.lora_gram(B, A, center)
    D = (B.double() @ A.double()).reshape(M, -1)
    if center:
        D = D - D.mean(0)
    ref = D @ D.T
    assert torch.isfinite(K).all()
    assert (K.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_lora_gram_float64_scales_far_apart(gen):
    B = torch.randn(3, 20, 2, generator=gen, dtype=torch.float64) * 1e200
    A = torch.randn(3, 2, 30, generator=gen, dtype=torch.float64) * 1e-200
    D = (B @ A).reshape(3, -1)
    ref = D @ D.T
    # Each K_ij is a float64 sum whose rounding is bounded relative to ‖ΔW_i‖‖ΔW_j‖ (Cauchy–Schwarz),
    # not to |K_ij|: an off-diagonal entry with cancellation has a larger relative error (3.9e-13 was
    # seen with rtol 1e-13). 1e-13 is ~450 u, above the (m + n + r²) u a dot of these lengths can lose.
    scale = ref.diagonal().sqrt()
    assert ((unisub.lora_gram(B, A) - ref).abs() <= 1e-13 * scale[:, None] * scale[None, :]).all()


@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.parametrize("center", [False, True])
def test_lora_gram_rejects_non_finite_factors(bad, center):
    B, A = torch.randn(3, 4, 2), torch.randn(3, 2, 5)
    A[1, 0, 2] = float(bad)
    with pytest.raises(RuntimeError, match=r"unisub.lora_gram: A contains NaN or infinity"):
        unisub.lora_gram(B, A, center)
    with pytest.raises(RuntimeError, match=r"unisub.lora_gram: B contains NaN or infinity"):
        unisub.lora_gram(A.mT, B.mT, center)


@pytest.mark.parametrize("shape", [(2, 0, 4), (2, 3, 0)])
def test_hosvd_of_an_empty_mode_is_a_clear_error(shape):
    with pytest.raises(RuntimeError, match=r"unisub.hosvd: X must not have a dimension of size 0"):
        unisub.hosvd(torch.randn(shape), [-1, -1, -1])


@pytest.mark.parametrize("call", [
    lambda X: unisub.orthonormalize(X[0]),
    lambda X: unisub.hosvd(X, [2, 2, 2], True)[0],
    lambda X: unisub.mode_svd(X, 1, 2, 0.0, True, "randomized")[0],
    lambda X: unisub.mode_svd(X, 1)[0],
    lambda X: unisub.lora_gram(X, X.mT),
], ids=["orthonormalize", "hosvd", "mode_svd randomized", "mode_svd", "lora_gram"])
def test_non_differentiable_ops_accept_inputs_that_require_grad(call, gen):
    # They have no autograd kernel: the forward must still run (it failed inside with "functions
    # with out=... arguments don't support automatic differentiation") and give the plain answer.
    X = torch.randn(3, 6, 4, generator=gen)
    want = call(X)
    got = call(X.clone().requires_grad_(True))
    torch.testing.assert_close(got.detach(), want)
