"""Every bad input gives an error that names the argument and what was expected."""
import pytest
import torch

import unisub

X3 = torch.randn(3, 4, 5)

CASES = [
    ("wrong order", lambda: unisub.mode_gram(torch.randn(4), 0), r"X must have at least 2 dimensions"),
    ("dim too large", lambda: unisub.mode_gram(X3, 3), r"dim must be in \[-3, 2\].*got 3"),
    ("dim too small", lambda: unisub.mode_gram(X3, -4), r"dim must be in \[-3, 2\].*got -4"),
    ("integer dtype", lambda: unisub.mode_gram(torch.ones(2, 3, dtype=torch.long), 1), r"X must be float16, bfloat16, float32 or float64, got Long"),
    ("complex dtype", lambda: unisub.mode_gram(torch.ones(2, 3, dtype=torch.complex64), 1), r"X must be float16.*got ComplexFloat"),
    ("empty stack", lambda: unisub.mode_gram(torch.randn(0, 4, 5), 1), r"X must hold at least one model"),
    ("G wrong shape", lambda: unisub.gram_update_(torch.zeros(4, 4), X3, 2), r"G must have shape \[5, 5\].*got \[4, 4\]"),
    ("G not square", lambda: unisub.gram_update_(torch.zeros(5), X3, 2), r"G must have shape \[5, 5\]"),
    ("G integer", lambda: unisub.gram_update_(torch.zeros(5, 5, dtype=torch.long), X3, 2), r"G must be float32 or float64"),
    ("G half", lambda: unisub.gram_update_(torch.zeros(5, 5, dtype=torch.half), X3, 2), r"G must be float32 or float64"),
    ("empty batch", lambda: unisub.gram_update_(torch.zeros(5, 5), torch.randn(0, 4, 5), 2), r"X must hold at least one model"),
    ("update dim", lambda: unisub.gram_update_(torch.zeros(5, 5), X3, 7), r"dim must be in"),
]


@pytest.mark.parametrize("call,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(call, pattern):
    with pytest.raises(RuntimeError, match=pattern) as info:
        call()
    assert "unisub." in str(info.value), "message must name the op"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_are_rejected():
    with pytest.raises(RuntimeError, match=r"G and X must be on the same device"):
        unisub.gram_update_(torch.zeros(5, 5, device="cuda"), X3, 2)


def test_non_finite_values_propagate_rather_than_vanish():
    X = torch.randn(3, 4, 5)
    X[1, 2, 3] = float("nan")
    G = unisub.mode_gram(X, 1)
    assert torch.isnan(G[2, 2]) and torch.isfinite(G[0, 1])
