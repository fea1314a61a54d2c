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


def largest_angle(U1: torch.Tensor, U2: torch.Tensor) -> float:
    """Largest principal angle between span(U2) and span(U1) (U1 ⊇-sized), from the sine
    ‖(I − U1U1ᵀ)U2‖₂ in float64: accurate near 0, where arccos of cosines is not."""
    U1, U2 = U1.double().cpu(), U2.double().cpu()
    residual = U2 - U1 @ (U1.T @ U2)
    return torch.linalg.matrix_norm(residual, ord=2).clamp(max=1).arcsin().item()
