"""unisub.lora's exact low-rank algebra and zoo file against dense float64 references (no peft
needed). Bounds: float64 results agree with the dense reference to 1e-10 relative."""
import pytest
import torch

from unisub.lora.lowrank import balanced_factors, gram_factors, lowrank_svd, residual2

TOL = 1e-10


def _factors(gen, m=30, n=20, r=5, scale=1.0):
    return torch.randn(m, r, generator=gen, dtype=torch.float64) * scale, torch.randn(r, n, generator=gen,
                                                                                     dtype=torch.float64)


def _orth(gen, d, k):
    return torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]


def test_gram_factors_give_the_mode_grams(gen):
    B, A = _factors(gen)
    D = B @ A
    X_out, X_in = gram_factors(B, A)
    assert torch.allclose(X_out @ X_out.T, D @ D.T, rtol=0, atol=TOL * (D @ D.T).abs().max())
    assert torch.allclose(X_in @ X_in.T, D.T @ D, rtol=0, atol=TOL * (D.T @ D).abs().max())


@pytest.mark.parametrize("r", [3, 40])  # r > min(m, n) too: reduced QRs, a rank-deficient core
def test_lowrank_svd_is_the_svd_of_the_product(gen, r):
    B, A = _factors(gen, r=r)
    D = B @ A
    U, S, V = lowrank_svd(B, A)
    S_ref = torch.linalg.svdvals(D)
    k = min(r, 20)
    assert torch.allclose(S[:k], S_ref[:k], rtol=0, atol=TOL * S_ref[0])
    assert torch.allclose(U @ torch.diag(S) @ V.T, D, rtol=0, atol=TOL * D.abs().max())
    U2, S2, V2 = lowrank_svd(B, A, rank=2)
    best = torch.linalg.norm(D - U2 @ torch.diag(S2) @ V2.T)
    assert abs(float(best) - float(S_ref[2:].pow(2).sum().sqrt())) <= TOL * float(S_ref[0])  # Eckart–Young
    Bb, Ab = balanced_factors(U, S, V)
    assert torch.allclose(Bb @ Ab, D, rtol=0, atol=TOL * D.abs().max())
    assert torch.allclose(Bb.norm(dim=0), Ab.norm(dim=1), rtol=1e-12)


def test_residual_is_exact_even_when_tiny(gen):
    B, A = _factors(gen)
    U, V = _orth(gen, 30, 8), _orth(gen, 20, 6)
    D = B @ A
    r2, n2, C = residual2(B, A, U, V)
    assert torch.allclose(C, U.T @ D @ V, rtol=0, atol=TOL * D.abs().max())
    ref = torch.linalg.norm(D - U @ U.T @ D @ V @ V.T) ** 2
    assert abs(r2 - float(ref)) <= TOL * float(ref)
    assert abs(n2 - float(torch.linalg.norm(D) ** 2)) <= TOL * n2
    # ΔW inside the subspace but for 1e-9 of it: ‖ΔW‖² − ‖C‖² would return rounding noise
    U2, V2 = torch.linalg.qr(B)[0], torch.linalg.qr(A.T)[0]
    E = torch.randn(30, 20, generator=gen, dtype=torch.float64) * 1e-9
    Bx, Ax = torch.cat([B, E], 1), torch.cat([A, torch.eye(20, dtype=torch.float64)], 0)
    D = Bx @ Ax
    r2, _, _ = residual2(Bx, Ax, U2, V2)
    ref = torch.linalg.norm(D - U2 @ U2.T @ D @ V2 @ V2.T) ** 2
    assert ref > 0 and abs(r2 - float(ref)) <= 1e-6 * float(ref)


def test_gram_factor_streams_past_its_width(gen):
    """GramFactor recompresses once it is wider than 2d and switches to the Gram's eigensolver past
    d columns: the same spectrum and eigenvectors as the dense float64 Gram, at every stage."""
    from unisub.lora.compress import GramFactor, basis

    d = 12
    g, G = GramFactor(d), torch.zeros(d, d, dtype=torch.float64)
    for step in range(9):  # 9 x 4 columns: tall, then wide, then recompressed past 24
        X = torch.randn(d, 4, generator=gen, dtype=torch.float64) * (step + 1)
        g.add(X)
        G += X @ X.T
        assert g.F.shape[1] <= 2 * d
        evals, evecs = g.eig()
        ref = torch.linalg.eigvalsh(G).flip(0)
        k = min(evals.numel(), d)
        assert torch.allclose(evals[:k], ref[:k], rtol=0, atol=TOL * float(ref[0]))
        assert torch.allclose(evecs @ torch.diag(evals) @ evecs.T, G, rtol=0, atol=TOL * float(ref[0]))
    U, ev, (Q, lam) = basis(g, rank=3, energy=None)
    assert U.shape == (d, 3) and torch.allclose(U.T @ U, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(GramFactor(d, (Q, lam)).F @ GramFactor(d, (Q, lam)).F.T, G, atol=TOL * float(ev[0]))
