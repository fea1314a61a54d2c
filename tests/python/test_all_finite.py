"""unisub.all_finite, the check both readers run on every tensor they read: it must agree with
torch.isfinite(t).all() on every floating dtype, wherever the bad value sits (the scan works in
chunks and threads), on views that are not contiguous, and on the values next to the edges
(the largest finite, subnormals, signed zeros)."""
import pytest
import torch

import unisub  # noqa: F401

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("n", [1, 7, 16384, 16385, (1 << 20) + 3, (1 << 21) + 5])
def test_every_position_of_a_bad_value_is_found(dtype, bad, n, gen):
    x = torch.randn(n, generator=gen).to(dtype)
    assert torch.ops.unisub.all_finite(x)
    for i in {0, n // 2, n - 1, int(torch.randint(n, (1,), generator=gen))}:
        y = x.clone()
        y[i] = bad
        assert not torch.ops.unisub.all_finite(y), (dtype, bad, n, i)


@pytest.mark.parametrize("dtype", FLOATS)
def test_edge_values_are_finite(dtype):
    fi = torch.finfo(dtype)
    x = torch.tensor([fi.max, -fi.max, fi.tiny, fi.tiny / 4, -fi.tiny / 4, 0.0, -0.0, fi.eps], dtype=torch.float64).to(dtype)
    assert bool(torch.isfinite(x).all())
    assert torch.ops.unisub.all_finite(x)


@pytest.mark.parametrize("dtype", FLOATS)
def test_views_and_other_layouts(dtype, gen):
    x = torch.randn(64, 48, generator=gen).to(dtype)
    x[5, 7] = float("nan")
    assert not torch.ops.unisub.all_finite(x.t())  # not contiguous: the aminmax route
    assert torch.ops.unisub.all_finite(x[6:].t())
    assert torch.ops.unisub.all_finite(x[:, 8:])
    assert not torch.ops.unisub.all_finite(x[:, 7])


def test_integers_and_empty_tensors_are_finite():
    assert torch.ops.unisub.all_finite(torch.arange(10))
    assert torch.ops.unisub.all_finite(torch.empty(0, 3))
    assert torch.ops.unisub.all_finite(torch.empty(0, dtype=torch.float16))


def test_agrees_with_torch_on_random_patterns(gen):
    for _ in range(200):
        dtype = FLOATS[int(torch.randint(4, (1,), generator=gen))]
        x = torch.randn(int(torch.randint(1, 5000, (1,), generator=gen)), generator=gen).to(dtype)
        k = int(torch.randint(0, 3, (1,), generator=gen))
        for _ in range(k):
            x[int(torch.randint(x.numel(), (1,), generator=gen))] = [float("nan"), float("inf"), -float("inf")][k]
        assert torch.ops.unisub.all_finite(x) == bool(torch.isfinite(x).all())


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_device_agrees_with_torch(dtype, device, gen):
    x = torch.randn(3000, generator=gen).to(dtype)
    assert torch.ops.unisub.all_finite(x.to(device))
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1234] = bad
        assert not torch.ops.unisub.all_finite(y.to(device))
