"""mode_svd(method="auto") is as accurate as the exact Gram route on every spectrum (issue #15):
the sketch is kept only with an a-posteriori residual certificate, else the Gram route runs.
Bound: the kept singular values within 1e-10 relative of a float64 SVD of the unfolding, at the
sizes where auto tries the sketch (d ≥ 512, rank + 10 ≤ d/4)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import unisub
from references import largest_angle, unfold

D = 1024  # width of the analysed mode: auto tries the sketch here


def stack_with_spectrum(sigma, gen, models=64, rows=16):
    """X[models, rows, D] whose mode-2 unfolding (D × models·rows) has exactly the values `sigma`."""
    cols = models * rows
    U = torch.linalg.qr(torch.randn(D, len(sigma), generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(cols, len(sigma), generator=gen, dtype=torch.float64))[0]
    Y = (U * sigma) @ V.T  # [D, cols]
    return Y.reshape(D, models, rows).permute(1, 2, 0).contiguous()


def reference(X, center):
    Xc = X - X.mean(0, keepdim=True) if center else X
    U, S, _ = torch.linalg.svd(unfold(Xc, 2), full_matrices=False)
    return U, S


def gram_eigh_calls(fn):
    """How many D × D symmetric eigensolves fn ran (the Gram route's signature)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "aten::linalg_eigh" and e.input_shapes and e.input_shapes[0] == [D, D])


def assert_kept_values_exact(S, Sr):
    rel = ((S - Sr[: len(S)]).abs() / Sr[: len(S)]).max()
    assert rel <= 1e-10, f"kept singular values off by {rel:.2e} relative"


def test_flat_noise_floor_falls_back_to_the_exact_route(gen):
    # The case: three strong directions over a noise floor; rank 8 caps τ = 0.9. The old
    # shape rule sketched it and returned σ₄…σ₈ 3 % low.
    models, rows = 64, 16
    strong = torch.linalg.qr(torch.randn(D, 3, generator=gen, dtype=torch.float64))[0]
    coeffs = torch.randn(models, rows, 3, generator=gen, dtype=torch.float64) * torch.tensor([40.0, 30.0, 20.0], dtype=torch.float64)
    X = coeffs @ strong.T + torch.randn(models, rows, D, generator=gen, dtype=torch.float64)
    _, Sr = reference(X, True)
    U, S = unisub.mode_svd(X, 2, rank=8, energy=0.9, center=True)
    assert S.shape == (8,)
    assert_kept_values_exact(S, Sr)
    assert gram_eigh_calls(lambda: unisub.mode_svd(X, 2, rank=8, energy=0.9, center=True)) == 1


@pytest.mark.parametrize("kind", ["tiny_gap", "cluster_at_cut", "flat_tail"])
def test_hard_spectra_are_exact(kind, gen):
    j = torch.arange(D, dtype=torch.float64)
    sigma = 10 * 0.9 ** j
    if kind == "tiny_gap":  # σ₉ a hair below σ₈
        sigma[8:] = sigma[7] * (1 - 1e-6) * 0.9 ** (j[8:] - 8)
    elif kind == "cluster_at_cut":  # σ₆ … σ₁₂ equal to 1e-8
        sigma[5:12] = sigma[5] * (1 + 1e-8 * torch.arange(7, 0, -1, dtype=torch.float64))
    else:  # exactly flat below the first three
        sigma[3:] = 1.0
    X = stack_with_spectrum(sigma, gen)
    _, Sr = reference(X, False)
    U, S = unisub.mode_svd(X, 2, rank=8)
    assert_kept_values_exact(S, Sr)
    eye = torch.eye(8, dtype=torch.float64)
    assert (U.T @ U - eye).abs().max() <= 1e-12


@pytest.mark.parametrize("center", [False, True])
def test_decaying_spectrum_keeps_the_certified_sketch(center, gen):
    j = torch.arange(D, dtype=torch.float64)
    X = stack_with_spectrum(0.7 ** j, gen)
    Ur, Sr = reference(X, center)
    U, S = unisub.mode_svd(X, 2, rank=8, center=center)
    assert_kept_values_exact(S, Sr)
    assert largest_angle(U, Ur[:, :8]) <= 1e-8
    # The sketch was kept: no D × D Gram eigensolve ran.
    assert gram_eigh_calls(lambda: unisub.mode_svd(X, 2, rank=8, center=center)) == 0


def test_float32_input_gets_the_float64_accuracy_rounded_once(gen):
    j = torch.arange(D, dtype=torch.float64)
    X = stack_with_spectrum(0.7 ** j, gen).float()
    _, Sr = reference(X.double(), False)
    _, S = unisub.mode_svd(X, 2, rank=8)
    assert S.dtype == torch.float32
    assert ((S.double() - Sr[:8]).abs() / Sr[:8]).max() <= 2 ** -23


def test_randomized_stays_the_fast_approximation(gen):
    # The documented trade: `randomized` never falls back, so on a noise floor it is approximate.
    models, rows = 64, 16
    X = torch.randn(models, rows, D, generator=gen, dtype=torch.float64)
    _, Sr = reference(X, False)
    _, S = unisub.mode_svd(X, 2, rank=8, method="randomized")
    rel = ((S - Sr[:8]).abs() / Sr[:8]).max()
    assert rel <= 0.2 and (S <= Sr[:8] * (1 + 1e-12)).all()  # Ritz values never exceed the true ones
