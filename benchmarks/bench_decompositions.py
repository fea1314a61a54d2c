"""svd, mode_svd and lora_gram against the obvious plain-PyTorch route (issue #3 targets):
- svd of 512 x 64 x 64 and 500 x 4096 x 16 (float32) vs torch.linalg.svd of the same batch;
- mode_svd(rank=32) of a 500 x 16 x 4096 LoRA-A stack vs the full SVD of its unfolding and vs the
  Gram route, on a decaying spectrum (auto keeps its certified sketch) and a noise floor (auto
  falls back to the Gram route);
- lora_gram for M = 200, r = 16, m = n = 1024 vs forming every ΔW and their Gram (and the centred
  variant vs forming, centring and the Gram), and vs the plain-PyTorch factored formulations
  (issue #17: two full (Mr)² Grams and a block reduction; the best of them is the yardstick;
  benchmarks/lora_gram_speed.py times them interleaved, best of N)."""
import torch

import unisub
from harness import Case

SIZES = {
    "quick": {"svd": [(128, 64, 64), (100, 1024, 16)], "mode": (100, 16, 1024, 16), "lora": (50, 512, 16, 512)},
    "full": {"svd": [(512, 64, 64), (500, 4096, 16)], "mode": (500, 16, 4096, 32), "lora": (200, 1024, 16, 1024)},
}


def lora_like_stack(M, r, n, gen, dtype, directions=64, decay=0.85, noise=1e-4):
    """M factors [r, n] sharing `directions` input directions with geometrically decaying weight,
    plus a small noise floor: the spectrum a LoRA-A zoo shows (unlike a Gaussian stack's flat one)."""
    basis = torch.linalg.qr(torch.randn(n, directions, generator=gen, dtype=torch.float64))[0]
    weights = decay ** torch.arange(directions, dtype=torch.float64)
    coeffs = torch.randn(M, r, directions, generator=gen, dtype=torch.float64) * weights
    return (coeffs @ basis.T + noise * torch.randn(M, r, n, generator=gen, dtype=torch.float64)).to(dtype)


def factored_baselines(B, A):
    """What a competent PyTorch user writes for Kᵢⱼ = ⟨BᵢAᵢ, BⱼAⱼ⟩_F without forming ΔW: the
    concatenated factors' full Grams P = BcᵀBc and Q = AcAcᵀ ((Mr)² each, no symmetry saved) and
    Σ over each r × r block of P ∘ Q. Variants differ in the reduction; all sum in float64 except
    the einsum one (float32 sums for float32 factors, the fastest a user would find)."""
    M, m, r = B.shape
    n = A.shape[2]

    def grams():
        Bc = B.permute(1, 0, 2).reshape(m, M * r)
        Ac = A.reshape(M * r, n)
        return Bc.T @ Bc, Ac @ Ac.T

    def plain():
        P, Q = grams()
        return (P * Q).reshape(M, r, M, r).sum((1, 3), dtype=torch.float64)

    def in_place_last_first():  # no third (Mr)² tensor; the contiguous last axis reduced first
        P, Q = grams()
        return P.mul_(Q).view(M, r, M, r).sum(3, dtype=torch.float64).sum(1)

    def einsum_reduce():
        P, Q = grams()
        return torch.einsum("akbl,akbl->ab", P.view(M, r, M, r), Q.view(M, r, M, r))

    def einsum_grams():  # the Grams by einsum straight on the stacked factors
        P = torch.einsum("amk,bml->akbl", B, B)
        Q = torch.einsum("akn,bln->akbl", A, A)
        return (P * Q).sum((1, 3), dtype=torch.float64)

    return {"factored": plain, "factored in place": in_place_last_first,
            "factored einsum-reduce": einsum_reduce, "factored einsum-Grams": einsum_grams}


def cases(device: str, size: str = "quick", dtypes=(torch.float32,)):
    gen = torch.Generator().manual_seed(0)
    sizes = SIZES[size]
    for dtype in dtypes:
        for shape in sizes["svd"]:
            A = torch.randn(shape, generator=gen, dtype=dtype).to(device)
            for method in ("auto", "gram", "jacobi"):
                if method == "jacobi" and shape[1] > 256:
                    continue
                yield Case(op=f"svd[{method}]", shape=str(shape), dtype=dtype, device=device,
                           ours=lambda A=A, m=method: unisub.svd(A, -1, m),
                           baselines={"torch.linalg.svd": lambda A=A: torch.linalg.svd(A, full_matrices=False)})
        M, r_dim, n, rank = sizes["mode"]
        # auto keeps its sketch only where the residuals certify it (issue #15): a LoRA-like stack
        # whose spectrum falls away after the kept rank keeps it; a Gaussian stack (a flat noise
        # floor) falls back to the exact Gram route, so that case is measured against `gram` too.
        for spectrum, X in (("decaying", lora_like_stack(M, r_dim, n, gen, dtype)),
                            ("noise floor", torch.randn(M, r_dim, n, generator=gen, dtype=dtype))):
            X = X.to(device)
            yield Case(op=f"mode_svd[rank={rank}]", shape=f"{(M, r_dim, n)} dim=2 c, {spectrum}", dtype=dtype,
                       device=device, ours=lambda X=X, k=rank: unisub.mode_svd(X, 2, rank=k, center=True),
                       baselines={"svd of unfolding": lambda X=X: torch.linalg.svd(
                           (X - X.mean(0)).movedim(2, 0).reshape(X.shape[2], -1), full_matrices=False),
                                  "mode_svd gram": lambda X=X, k=rank: unisub.mode_svd(
                                      X, 2, rank=k, center=True, method="gram")})
        M, m, r, n = sizes["lora"]
        B = torch.randn(M, m, r, generator=gen, dtype=dtype).to(device)
        A = torch.randn(M, r, n, generator=gen, dtype=dtype).to(device)

        def dense(B=B, A=A):
            D = torch.bmm(B, A).reshape(B.shape[0], -1)
            return D @ D.T

        def dense_centred(B=B, A=A):
            D = torch.bmm(B, A).reshape(B.shape[0], -1)
            D = D - D.mean(0)
            return D @ D.T

        yield Case(op="lora_gram", shape=f"M={M} m={m} r={r} n={n}", dtype=dtype, device=device,
                   ours=lambda B=B, A=A: unisub.lora_gram(B, A),
                   baselines={"form ΔW + Gram": dense, **factored_baselines(B, A)})
        # center=True computes in float64 whatever the input (the double centring cancels).
        yield Case(op="lora_gram[center]", shape=f"M={M} m={m} r={r} n={n}", dtype=dtype, device=device,
                   ours=lambda B=B, A=A: unisub.lora_gram(B, A, True),
                   baselines={"form ΔW, centre, Gram": dense_centred})
