"""Accuracy that goes with lora_gram's speed: on the issue's size (M = 200, r = 16, m = n = 1024,
float32 factors), the error of unisub.lora_gram and of the float32 baseline (form every ΔW, its
Gram) against a float64 dense reference, per pair relative to ‖ΔWᵢ‖‖ΔWⱼ‖, for the uncentred Gram
(float32 GEMMs inside) and the centred one (float64 inside) on deltas sharing a common part.

    python benchmarks/lora_gram_accuracy.py [--size quick|full] [--device cpu|cuda]
"""
import argparse

import torch

import unisub

SIZES = {"quick": (50, 512, 16, 512), "full": (200, 1024, 16, 1024)}


def dense_gram(B, A, center, dtype):
    D = torch.bmm(B.to(dtype), A.to(dtype)).reshape(B.shape[0], -1)
    if center:
        D = D - D.mean(0)
    return D @ D.T, D.double().norm(dim=1)


def worst_pair_error(K, ref, norms):
    return ((K.double() - ref).abs() / (norms[:, None] * norms[None, :])).max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    M, m, r, n = SIZES[args.size]
    gen = torch.Generator().manual_seed(0)
    shared = 4.0  # common part of every delta, in units of each model's own part
    B = shared * torch.randn(1, m, r, generator=gen) + torch.randn(M, m, r, generator=gen)
    A = shared * torch.randn(1, r, n, generator=gen) + torch.randn(M, r, n, generator=gen)
    B, A = B.to(args.device), A.to(args.device)
    print(f"M={M} m={m} r={r} n={n}, float32 factors, {args.device}; "
          "worst |K - K64| / (|dW_i| |dW_j|) over all pairs (centred: norms of the centred deltas)")
    for center in (False, True):
        ref, norms = dense_gram(B, A, center, torch.float64)
        base, _ = dense_gram(B, A, center, torch.float32)
        ours = unisub.lora_gram(B, A, center)
        print(f"  center={center!s:<5}  unisub.lora_gram {worst_pair_error(ours, ref, norms):.2e}   "
              f"form dW + Gram (float32) {worst_pair_error(base, ref, norms):.2e}")


if __name__ == "__main__":
    main()
