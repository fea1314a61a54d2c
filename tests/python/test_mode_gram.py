"""mode_gram and gram_update_ against float64 references (explicit unfoldings in plain torch).

Error bounds. The kernels accumulate in float64, so for a float64 result every entry is within
c·K·ε₆₄·(|A||A|ᵀ)ᵢⱼ of the exact Gram (K = unfolding width, c = 2 to leave room for the blocked
summation order); centring adds 2·M·ε₆₄·(|A||X|ᵀ + |X||A|ᵀ)ᵢⱼ, the input's own rounding carried
by the mean; a float32 result adds one rounding, ε₃₂/2 · |Gᵢⱼ|.
"""
import itertools

import pytest
import torch

import unisub
from references import centring_error_scale, gram_error_scale, gram_reference

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def assert_gram_close(G, X, dim, center):
    ref = gram_reference(X, dim, center)
    width = X.numel() // X.shape[dim]
    bound = 2 * width * EPS64 * gram_error_scale(X, dim, center)
    if center:  # the mean itself carries the input's rounding (ours and the reference's)
        bound = bound + 2 * X.shape[0] * EPS64 * centring_error_scale(X, dim)
    if G.dtype == torch.float32:
        bound = bound + 0.5 * EPS32 * ref.abs() + torch.finfo(torch.float32).tiny
    err = (G.double().cpu() - ref).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"entry error exceeds its bound by {worst:.3e} (max err {err.max().item():.3e})"
    assert torch.equal(G, G.T), "Gram must be exactly symmetric"


SHAPES = [(6, 5), (4, 3, 7), (3, 2, 4, 5), (2, 3, 2, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("center", [False, True])
def test_every_mode_of_every_order(shape, dtype, center, device, gen):
    X = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    for dim in range(len(shape)):
        G = unisub.mode_gram(X, dim, center)
        assert G.shape == (shape[dim], shape[dim]) and G.dtype == dtype and G.device == X.device
        assert_gram_close(G, X, dim, center)
    torch.testing.assert_close(unisub.mode_gram(X, -1, center), unisub.mode_gram(X, len(shape) - 1, center))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_common_offset_loses_nothing_when_centred(dtype, device, gen):
    # X = 10⁴ + noise: a Gram of X minus the mean's Gram would cancel ~8 digits.
    X = (1e4 + torch.randn(50, 30, 20, generator=gen, dtype=dtype)).to(device)
    for dim in range(3):
        assert_gram_close(unisub.mode_gram(X, dim, center=True), X, dim, True)


def test_graded_and_rank_deficient_stacks(device, gen):
    scales = torch.logspace(0, -8, 12, dtype=torch.float64)
    graded = torch.randn(10, 12, 9, generator=gen, dtype=torch.float64) * scales[:, None]
    low_rank = torch.randn(10, 12, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 9, generator=gen, dtype=torch.float64)
    identical = torch.randn(1, 12, 9, generator=gen, dtype=torch.float64).expand(10, 12, 9)
    for X in (graded, low_rank, identical, torch.zeros(4, 3, 5, dtype=torch.float64)):
        for dim, center in itertools.product(range(3), (False, True)):
            assert_gram_close(unisub.mode_gram(X.to(device), dim, center), X, dim, center)
    # Centring a stack of identical models leaves exactly nothing.
    assert torch.count_nonzero(unisub.mode_gram(identical.to(device), 1, center=True)) == 0


@pytest.mark.parametrize("make_view", [
    lambda X: X.transpose(1, 2),
    lambda X: X[:, ::2, 1:],
    lambda X: X.permute(2, 0, 1),
    lambda X: X.expand(3, *X.shape[1:]) if X.shape[0] == 1 else X[::2],
], ids=["transpose", "slices", "permute", "stride0-or-step"])
def test_non_contiguous_inputs(make_view, device, gen):
    base = torch.randn(6, 8, 10, generator=gen, dtype=torch.float64).to(device)
    X = make_view(base)
    for dim, center in itertools.product(range(3), (False, True)):
        assert_gram_close(unisub.mode_gram(X, dim, center), X, dim, center)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_and_return_float32(dtype, device, gen):
    X = torch.randn(7, 9, 5, generator=gen).to(dtype).to(device)
    for dim, center in itertools.product(range(3), (False, True)):
        G = unisub.mode_gram(X, dim, center)
        assert G.dtype == torch.float32
        assert_gram_close(G, X, dim, center)  # against the same half values, upcast exactly


def test_blocks_larger_than_the_workspace(gen):
    # 16 MiB of float64 columns per block would hold 2 048 columns of 1 024 rows; this stack
    # needs several blocks in mode 1 and several in mode 2.
    X = torch.randn(24, 1024, 160, generator=gen)
    for dim in (1, 2):
        assert_gram_close(unisub.mode_gram(X, dim, center=True), X, dim, True)


@pytest.mark.parametrize("g_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.float32, torch.float64])
def test_gram_update_streams_to_mode_gram(g_dtype, x_dtype, device, gen):
    X = torch.randn(11, 6, 4, 5, generator=gen).to(x_dtype).to(device)
    batches = range(0, 11, 3)
    for dim in (1, 2, 3):
        d = X.shape[dim]
        G = torch.zeros(d, d, dtype=g_dtype, device=device)
        for start in batches:
            assert unisub.gram_update_(G, X[start:start + 3], dim) is G
        if g_dtype == torch.float64:
            assert_gram_close(G, X, dim, False)
        else:  # one float32 rounding per batch added
            err = (G.double().cpu() - gram_reference(X, dim)).abs()
            assert (err <= len(batches) * EPS32 * gram_error_scale(X, dim)).all()


@pytest.mark.parametrize("rows", [7, 256, 300, 600])
def test_gram_update_in_place_path_is_exactly_symmetric(rows, device, gen):
    """A contiguous float64 G is accumulated in place (lower triangle, then mirrored): the result
    is exactly symmetric, within the float64 bound of G₀ + Σ XᵢXᵢᵀ, for one and several 256-row
    tiles; a non-contiguous G (the temporary-based path) gives the same up to rounding."""
    X = torch.randn(2, rows, 9, generator=gen, dtype=torch.float64).to(device)
    S = torch.randn(rows, rows, generator=gen, dtype=torch.float64)
    start = (S + S.T).to(device)
    G = start.clone()
    unisub.gram_update_(G, X, 1)
    assert torch.equal(G, G.T)
    ref = start.cpu() + gram_reference(X, 1)
    bound = 4 * 9 * EPS64 * (gram_error_scale(X, 1) + start.abs().cpu())
    assert ((G.cpu() - ref).abs() <= bound).all()
    strided = start.T.contiguous().T  # same values, column-major: not contiguous
    assert not strided.is_contiguous()
    unisub.gram_update_(strided, X, 1)
    assert ((strided.cpu() - ref).abs() <= bound).all()


def test_gram_update_model_axis(device, gen):
    X = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64).to(device)
    G = torch.eye(5, dtype=torch.float64, device=device)
    torch.ops.unisub.gram_update_(G, X, 0)
    torch.testing.assert_close(G.cpu(), torch.eye(5, dtype=torch.float64) + gram_reference(X, 0), rtol=1e-13, atol=1e-13)


def test_ops_are_reachable_through_torch_ops():
    assert torch.ops.unisub.mode_gram.default._schema.name == "unisub::mode_gram"
    assert torch.ops.unisub.gram_update_(torch.zeros(2, 2), torch.ones(1, 2, 3), 1) is None


@pytest.mark.parametrize("g_dtype", [torch.float32, torch.float64])
def test_gram_update_keeps_a_non_symmetric_start(g_dtype, device, gen):
    # G += XXᵀ whatever G holds: the in-place float64 route rebuilt G's upper triangle from its
    # lower one, so a non-symmetric G lost its upper triangle (the float32 route kept it).
    X = torch.randn(2, 7, 9, generator=gen, dtype=torch.float64).to(device)
    start = torch.randn(7, 7, generator=gen, dtype=torch.float64).to(g_dtype).to(device)
    G = start.clone()
    unisub.gram_update_(G, X, 1)
    ref = start.double().cpu() + gram_reference(X, 1)
    tol = 1e-12 if g_dtype == torch.float64 else 1e-5
    assert (G.double().cpu() - ref).abs().max() <= tol * ref.abs().max()
