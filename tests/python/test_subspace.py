"""Subspace (save/load, coefficients, rank choice) and the null spectra against direct samples."""
import pytest
import torch

from unisub import Subspace, SubspaceAccumulator
from unisub import nulls
from unisub.subspace import choose_rank


def test_save_load_round_trip_and_reconstruction(tmp_path, gen):
    X = torch.randn(9, 6, 5, generator=gen, dtype=torch.float64) + 2
    s = SubspaceAccumulator().update(X).finalize(slot="a/b.weight", metadata={"k": [1, 2]})
    s.save(tmp_path / "s.safetensors")
    t = Subspace.load(tmp_path / "s.safetensors")
    assert (t.slot, t.count, t.center, t.metadata) == ("a/b.weight", 9, True, {"k": [1, 2]})
    assert torch.equal(t.mean, s.mean)
    for m in ("out", "in"):
        assert torch.equal(t.bases[m], s.bases[m]) and torch.equal(t.eigenvalues[m], s.eigenvalues[m])
    # full-rank bases reconstruct every model exactly
    for W in X:
        torch.testing.assert_close(t.reconstruct(t.coefficients(W)), W, rtol=0, atol=1e-12)
    (tmp_path / "x.safetensors").write_bytes((tmp_path / "s.safetensors").read_bytes().replace(b"unisub.subspace/1", b"unisub.subspace/9"))
    with pytest.raises(ValueError, match="not a unisub subspace file"):
        Subspace.load(tmp_path / "x.safetensors")


def test_choose_rank():
    ev = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)  # cumulative 0.4 0.7 0.9 1.0
    assert choose_rank(ev, energy=0.9) == 3 and choose_rank(ev, energy=0.91) == 4
    assert choose_rank(ev, rank=2, energy=0.9) == 2 and choose_rank(ev) == 4 and choose_rank(ev, rank=9) == 4
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        choose_rank(ev, rank=0)


@pytest.mark.parametrize("p, N", [(40, 200), (60, 60), (80, 30)])
def test_nulls_match_gaussian_monte_carlo(p, N, gen):
    """Mean sorted eigenvalues of direct Gaussian samples against MP quantiles and Bartlett samples."""
    total = 5.0 * p * N  # entry variance 5
    direct = torch.stack([torch.linalg.eigvalsh((Z := torch.randn(p, N, generator=gen, dtype=torch.float64) * 5 ** 0.5) @ Z.T).flip(0)
                          for _ in range(40)]).mean(0)
    bart = torch.stack([nulls.gaussian_stack(p, N, total, seed=s) for s in range(40)]).mean(0)
    mp = nulls.marchenko_pastur(p, N, total)
    scale = direct[0]
    assert (bart - direct).abs().max() <= 0.03 * scale, "Bartlett samples are Wishart samples"
    # MP is the large-size limit: a few percent of the top eigenvalue at these sizes
    assert (mp - direct).abs().max() <= 0.08 * scale
    assert abs(float(mp.sum()) - total) <= 0.01 * total
    assert (direct[0] <= 1.1 * nulls.mp_upper_edge(p, N, total))
    if p > N:
        assert torch.all(mp[N:] == 0) and torch.all(bart[N:] == 0)
