"""unisub.merge and unisub.compress against float64 references written out in plain torch."""
import numpy as np
import pytest
import torch

import unisub
from unisub import CompressedZoo, compress, merge


def zoo(gen, M=6, shared_rank=3, dtype=torch.float32):
    """State dicts fine-tuned from one base: task vectors share a low-rank part, plus noise."""
    base = {"w": torch.randn(12, 9, generator=gen, dtype=torch.float64), "b": torch.randn(12, generator=gen, dtype=torch.float64),
            "conv": torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64), "steps": torch.tensor(7)}
    U = torch.linalg.qr(torch.randn(12, shared_rank, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(9, shared_rank, generator=gen, dtype=torch.float64))[0]
    models = []
    for _ in range(M):
        sd = {k: v.clone() for k, v in base.items()}
        sd["w"] = sd["w"] + U @ torch.randn(shared_rank, shared_rank, generator=gen, dtype=torch.float64) @ V.T \
            + 0.01 * torch.randn(12, 9, generator=gen, dtype=torch.float64)
        sd["b"] = sd["b"] + 0.1 * torch.randn(12, generator=gen, dtype=torch.float64)
        sd["conv"] = sd["conv"] + 0.1 * torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
        models.append({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()})
    base = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in base.items()}
    return base, models


def stack64(models, k):
    return torch.stack([sd[k].double() for sd in models])


def leading_basis(G, r):
    evals, evecs = torch.linalg.eigh(G)
    return evecs[:, evals.argsort(descending=True)[:r]]


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_mean_and_task_arithmetic(gen):
    base, models = zoo(gen, dtype=torch.float64)
    m = merge(models, "mean")
    torch.testing.assert_close(m["w"], stack64(models, "w").mean(0), rtol=1e-14, atol=1e-14)
    assert torch.equal(m["steps"], models[0]["steps"])  # integer tensors are copied, not averaged
    ta = merge(models, "task_arithmetic", base=base, scale=0.4)
    for k in ("w", "b", "conv"):
        expect = base[k] + 0.4 * (stack64(models, k) - base[k]).sum(0)
        torch.testing.assert_close(ta[k], expect, rtol=1e-14, atol=1e-14)
    # the default λ = 1/M makes task arithmetic the mean merge
    torch.testing.assert_close(merge(models, "task_arithmetic", base=base)["w"], m["w"], rtol=1e-13, atol=1e-13)


def ties_reference(task_vectors, density):
    """TIES written entry by entry in NumPy."""
    T = task_vectors.reshape(task_vectors.shape[0], -1).numpy()
    keep = max(1, int(round(density * T.shape[1])))
    trimmed = np.zeros_like(T)
    for i, t in enumerate(T):
        thr = np.sort(np.abs(t))[::-1][keep - 1]
        trimmed[i] = np.where(np.abs(t) >= thr, t, 0.0)
    out = np.zeros(T.shape[1])
    for j in range(T.shape[1]):
        elected = np.sign(trimmed[:, j].sum())
        agree = [v for v in trimmed[:, j] if v != 0 and np.sign(v) == elected]
        out[j] = np.mean(agree) if agree else 0.0
    return torch.from_numpy(out).reshape(task_vectors.shape[1:])


@pytest.mark.parametrize("density", [0.1, 0.2, 1.0])
def test_ties_against_an_entrywise_reference(density, gen):
    base, models = zoo(gen, dtype=torch.float64)
    merged = merge(models, "ties", base=base, density=density)
    for k in ("w", "b", "conv"):
        expect = base[k] + ties_reference(stack64(models, k) - base[k], density)
        torch.testing.assert_close(merged[k], expect, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("rank", [1, 3, 9])
def test_subspace_merge_against_dense_projection(rank, gen):
    base, models = zoo(gen, M=7, dtype=torch.float64)
    merged = merge(models, "subspace", base=base, rank=rank, energy=None)
    tau = stack64(models, "w") - base["w"]
    U = leading_basis(sum(t @ t.T for t in tau), rank)      # mode "out" of the uncentred task vectors
    V = leading_basis(sum(t.T @ t for t in tau), rank)      # mode "in"
    expect = base["w"] + U @ U.T @ tau.mean(0) @ V @ V.T
    # eigenvector spans agree to ~ε/gap; the spectrum of this zoo has gaps of order 1e-2 or more
    assert rel(merged["w"], expect) <= 1e-10
    conv_tau = (stack64(models, "conv") - base["conv"]).reshape(7, 4, -1)
    Uc, Vc = leading_basis(sum(t @ t.T for t in conv_tau), min(rank, 4)), leading_basis(sum(t.T @ t for t in conv_tau), rank)
    expect_conv = base["conv"] + (Uc @ Uc.T @ conv_tau.mean(0) @ Vc @ Vc.T).reshape(4, 2, 3, 3)
    assert rel(merged["conv"], expect_conv) <= 1e-10
    # 1-D tensors take task arithmetic
    torch.testing.assert_close(merged["b"], base["b"] + (stack64(models, "b") - base["b"]).mean(0), rtol=1e-14, atol=1e-14)


def test_centred_subspace_merge_collapses_to_the_mean(gen):
    base, models = zoo(gen, dtype=torch.float64)
    collapsed = merge(models, "subspace", base=base, rank=2, center=True)
    assert rel(collapsed["w"], merge(models, "mean")["w"]) <= 1e-12


def test_merge_rejects_bad_input(gen):
    base, models = zoo(gen)
    with pytest.raises(ValueError, match="models is empty"):
        merge([], "mean")
    with pytest.raises(ValueError, match="method must be one of"):
        merge(models, "average")
    with pytest.raises(ValueError, match="needs base="):
        merge(models, "ties")
    with pytest.raises(ValueError, match="density must lie in"):
        merge(models, "ties", base=base, density=0)
    odd = dict(models[1], w=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="'w' has different shapes"):
        merge([models[0], odd], "mean")
    with pytest.raises(ValueError, match="different keys"):
        merge([models[0], {"w": models[1]["w"]}], "mean")
    bad = dict(models[1], w=models[1]["w"].clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="non-finite"):
        merge([models[0], bad], "mean")
    # a non-finite base or scale used to give an all-NaN merge silently
    bad_base = dict(base, w=base["w"].clone().fill_(float("inf")))
    for method in ("task_arithmetic", "ties", "subspace"):
        with pytest.raises(ValueError, match="'w' has non-finite entries in base"):
            merge(models, method, base=bad_base)
    with pytest.raises(ValueError, match="scale must be a finite number, got nan"):
        merge(models, "task_arithmetic", base=base, scale=float("nan"))


def test_compress_full_rank_is_lossless_and_truncation_matches_a_reference(gen):
    base, models = zoo(gen, M=8, dtype=torch.float64)
    full = compress(models, dtype=torch.float64)
    for i in range(8):
        for k, v in full.decompress(i).items():
            torch.testing.assert_close(v, models[i][k], rtol=0, atol=1e-12)
    r = 3
    z = compress(models, rank=r, dtype=torch.float64)
    X = stack64(models, "w")
    mu = X.mean(0)
    D = X - mu
    U = leading_basis(sum(d @ d.T for d in D), r)
    V = leading_basis(sum(d.T @ d for d in D), r)
    for i in range(8):
        expect = mu + U @ U.T @ D[i] @ V @ V.T
        assert rel(z.decompress(i)["w"], expect) <= 1e-10
    # bytes: w (12 × 9, 8 models) → mean 108 + bases (12 + 9)·3 + 8·3·3 coefficients, float64
    assert z.coefficients["w"].shape == (8, 3, 3) and "b" in z.raw and "steps" in z.raw
    assert z.nbytes() == 8 * (108 + 63 + 72) + sum(t.numel() * t.element_size() for k, t in z.raw.items()) \
        + sum(8 * (z.means[k].numel() + z.bases[k][0].numel() + z.bases[k][1].numel() + z.coefficients[k].numel())
              for k in z.means if k != "w")
    assert z.original_nbytes() == 8 * (8 * (108 + 12 + 72) + 8)
    assert z.ratio() == z.original_nbytes() / z.nbytes()


def test_compress_round_trips_through_a_file_and_rejects_bad_input(gen, tmp_path):
    _, models = zoo(gen, M=5)
    z = compress(models, energy=0.99)
    z.save(tmp_path / "zoo.safetensors")
    y = CompressedZoo.load(tmp_path / "zoo.safetensors")
    for i in (0, 4, -1):
        a, b = z.decompress(i), y.decompress(i)
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == models[0][k].dtype for k in a)
    with pytest.raises(IndexError, match="out of range for 5 models"):
        z.decompress(5)
    with pytest.raises(IndexError, match="out of range for 5 models"):
        z.decompress(True)  # a bool used to index the coefficients as a mask and fail in reshape
    # keys naming no tensor used to leave every tensor uncompressed without a word
    with pytest.raises(ValueError, match=r"compress: keys not in the models: \['W'\]"):
        compress(models, energy=0.99, keys=["W"])
    with pytest.raises(ValueError, match="models is empty"):
        compress([])
    with pytest.raises(ValueError, match="'w' has different shapes"):
        compress([models[0], dict(models[1], w=torch.zeros(2, 2))])
    unisub.Subspace(slot="x", mean=torch.zeros(2, 2), bases={}, eigenvalues={}, count=1).save(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="not a unisub compressed zoo"):
        CompressedZoo.load(tmp_path / "s.safetensors")
