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
    draws = 40
    direct_samples = torch.stack([torch.linalg.eigvalsh((Z := torch.randn(p, N, generator=gen, dtype=torch.float64) * 5 ** 0.5) @ Z.T).flip(0)
                                  for _ in range(draws)])
    bart_samples = torch.stack([nulls.gaussian_stack(p, N, total, seed=s) for s in range(draws)])
    direct, bart = direct_samples.mean(0), bart_samples.mean(0)
    mp = nulls.marchenko_pastur(p, N, total)
    scale = direct[0]
    # Two sample means of the same distribution differ by a few standard errors; a fixed fraction of the
    # top eigenvalue is not a bound (the top eigenvalue's spread is ~3 % at p=80, N=30). 6 standard
    # errors per eigenvalue: a false alarm has probability ~1e-7 over all p eigenvalues (max |z| over 30
    # replays x 3 shapes measured 3.6).
    std_err = (direct_samples.var(0) / draws + bart_samples.var(0) / draws).sqrt()
    assert torch.all((bart - direct).abs() <= 6 * std_err + 1e-12 * scale), "Bartlett samples are Wishart samples"
    # MP is the large-size limit: a few percent of the top eigenvalue at these sizes
    assert (mp - direct).abs().max() <= 0.08 * scale
    assert abs(float(mp.sum()) - total) <= 0.01 * total
    assert (direct[0] <= 1.1 * nulls.mp_upper_edge(p, N, total))
    if p > N:
        assert torch.all(mp[N:] == 0) and torch.all(bart[N:] == 0)
