"""float64 references built from plain torch ops (explicit unfoldings), for the tests."""
import torch


def unfold(X: torch.Tensor, dim: int) -> torch.Tensor:
    return X.movedim(dim, 0).reshape(X.shape[dim], -1)


def gram_reference(X: torch.Tensor, dim: int, center: bool = False) -> torch.Tensor:
    X = X.detach().double().cpu()
    if center:
        X = X - X.mean(0, keepdim=True)
    A = unfold(X, dim)
    return A @ A.T


def gram_error_scale(X: torch.Tensor, dim: int, center: bool = False) -> torch.Tensor:
    """|A| |A|ᵀ: the natural scale of rounding errors in each Gram entry (cancellation aware)."""
    X = X.detach().double().cpu()
    if center:
        X = X - X.mean(0, keepdim=True)
    A = unfold(X, dim).abs()
    return A @ A.T


def centring_error_scale(X: torch.Tensor, dim: int) -> torch.Tensor:
    """|A| |X|ᵀ + |X| |A|ᵀ (A centred, X raw): how an error of ε·|X| in the mean — the input's
    own rounding, which no method can beat — reaches each entry of a centred Gram."""
    X = X.detach().double().cpu()
    A = unfold(X - X.mean(0, keepdim=True), dim).abs()
    R = unfold(X, dim).abs()
    return A @ R.T + R @ A.T
