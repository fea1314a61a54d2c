"""The analysis job's numeric core, once in libunisub: one rule for the rank at τ (mode_svd, analyze
and unisub-analyze keep the same r at the edge), strict JSON report entries (null where a number is
undefined), the Gaussian null drawn by torch's generator, and both front ends giving the same entries."""
import json
import math
import subprocess

import pytest
import torch

import unisub
from unisub import metrics, nulls
from unisub.io import save_file
from unisub.subspace import DeltaSubspace, Subspace, rank_for_energy

EPS64 = torch.finfo(torch.float64).eps


def _strict_loads(text):
    def refuse(c):
        raise AssertionError(f"not RFC 8259 JSON: {c}")
    return json.loads(text, parse_constant=refuse)


def _stack_with_spectrum(ev, M, n, gen):
    """X [M, m, n] whose centred mode-"out" Gram has exactly the eigenvalues ``ev`` (up to rounding):
    the unfolding is U diag(√ev) Vᵀ with V's columns orthonormal and zero-mean over the models."""
    m = len(ev)
    V = torch.randn(M, n, m, generator=gen, dtype=torch.float64)
    V = V - V.mean(0, keepdim=True)
    V = torch.linalg.qr(V.reshape(M * n, m))[0]
    U = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))[0]
    Y = U @ torch.diag(torch.tensor(ev, dtype=torch.float64).sqrt()) @ V.T  # m × M·n, centred over models
    return Y.reshape(m, M, n).permute(1, 0, 2).contiguous()


# cumulative 0.5, 0.8, 0.95, 1.0: each τ below sits exactly on the edge of its rank
EDGE = [5.0, 3.0, 1.5, 0.5]
EDGE_TAUS = {0.5: 1, 0.8: 2, 0.95: 3}


def test_rank_rule_at_the_edge_is_one_rule(gen, tmp_path):
    """mode_svd(energy=τ), SubspaceAccumulator.finalize / analyze(energy=τ) and rank_for_energy keep
    the same r on spectra built to sit exactly at τ; the old rules (1e-12 absolute in mode_svd, 8ε
    relative in Python) could differ there."""
    for trial in range(6):
        X = _stack_with_spectrum(EDGE, M=7 + trial, n=5, gen=gen)
        ev = unisub.SubspaceAccumulator(modes=("out",)).update(X).finalize().eigenvalues["out"]
        for tau, r in EDGE_TAUS.items():
            U, S = unisub.mode_svd(X, 1, energy=tau, center=True, method="gram")
            sub = unisub.SubspaceAccumulator(modes=("out",)).update(X).finalize(energy=tau)
            assert (U.shape[1], sub.rank("out"), rank_for_energy(ev, tau)) == (r, r, r), (trial, tau)
            # the slack is rounding, not tolerance: a cumulative 1e-9 below τ does not reach it
            assert rank_for_energy(ev, tau + 1e-9) == r + 1
            assert unisub.mode_svd(X, 1, energy=tau + 1e-9, center=True, method="gram")[0].shape[1] == r + 1
    # 10ε short of τ = 0.8 (inside the slack 8·4·ε, beyond the old Python rule's 8ε·τ): the old
    # rules disagreed here (mode_svd kept 2, analyze 3); now every route keeps 2
    for trial in range(4):
        X = _stack_with_spectrum([5.0, 3.0 - 2.2e-14, 1.5, 0.5 + 2.2e-14], M=8, n=5, gen=gen)
        ev = unisub.SubspaceAccumulator(modes=("out",)).update(X).finalize().eigenvalues["out"]
        sub = unisub.SubspaceAccumulator(modes=("out",)).update(X).finalize(energy=0.8)
        U, _ = unisub.mode_svd(X, 1, energy=0.8, center=True, method="gram")
        assert (U.shape[1], sub.rank("out"), rank_for_energy(ev, 0.8)) == (2, 2, 2), trial
    # through the whole analysis job, from files
    X = _stack_with_spectrum(EDGE, M=8, n=5, gen=gen)
    (tmp_path / "zoo").mkdir()
    for i in range(8):
        save_file({"w": X[i]}, tmp_path / "zoo" / f"m{i}.safetensors")
    for tau, r in EDGE_TAUS.items():
        res = unisub.analyze(tmp_path / "zoo", modes=["out"], energy=tau, plots=False, progress=False)
        rep = res.report["slots"]["w"]["modes"]["out"]
        assert rep["rank"] == r and rep["rank_at_tau"][str(tau)] == r
        assert unisub.mode_svd(X, 1, energy=tau, center=True)[0].shape[1] == r


def test_rank_rule_edge_cases():
    ev = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert [rank_for_energy(ev, t) for t in (0.4, 0.7, 0.9, 1.0, 0.41)] == [1, 2, 3, 4, 2]
    assert rank_for_energy(torch.zeros(5, dtype=torch.float64), 0.9) == 1  # a zero stack keeps one direction
    # an explicit total larger than the spectrum's (a sketch): τ never reached gives every component
    assert torch.ops.unisub.rank_for_energy(ev, 0.99, 20.0) == 4
    assert torch.ops.unisub.rank_for_energy(ev, 0.5, 20.0) == 4 and torch.ops.unisub.rank_for_energy(ev, 0.35, 20.0) == 2
    with pytest.raises(RuntimeError, match=r"tau must lie in \(0, 1\]"):
        torch.ops.unisub.rank_for_energy(ev, 1.5)


def test_report_numbers_round_trip_and_keys_read_as_python_writes_them(gen):
    ev = torch.rand(37, generator=gen, dtype=torch.float64).sort(descending=True).values * 1e-3
    taus = (1e-5, 0.1, 1 / 3, 0.5, 1.0)
    rep = metrics.spectrum_report(ev, 5, 37, 90, taus, (1, 3, 100), float(ev.sum()) * 2, null_seed=3)
    # printed so that they parse back to the very same doubles (math.sqrt: correctly rounded, as
    # std::sqrt; torch's vectorised sqrt may differ in the last bit)
    assert rep["singular_values"] == [math.sqrt(x) for x in ev.tolist()]
    total = 0.0
    for x in ev.tolist():  # the library sums left to right in float64
        total += x
    assert rep["explained_variance_ratio"] == [x / total for x in ev.tolist()]
    assert list(rep["rank_at_tau"]) == [str(t) for t in taus]
    assert list(rep["reconstruction_error"]) == ["1", "3"]  # ranks past the dimension are left out
    assert rep["null"]["shape"] == [37, 90]
    assert torch.equal(torch.tensor(rep["null"]["gaussian_stack_eigenvalues"], dtype=torch.float64),
                       nulls.gaussian_stack(37, 90, total, seed=3))
    text = torch.ops.unisub.spectrum_report(ev, 5, 37, 90, 1.0, 3, 0, list(taus), [1])
    assert json.dumps(_strict_loads(text), allow_nan=False)


def test_frozen_slot_gives_strict_json_with_null(tmp_path, gen):
    """Identical models: no centred energy, the eigengap ratio is undefined: ``null``, not Infinity."""
    # dyadic entries: every mean of equal copies is exact, so the centred Grams are exactly zero
    W = torch.randint(-8, 8, (6, 4), generator=gen).double() / 4
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(5):
        save_file({"frozen": W, "moving": W + 0.1 * torch.randn(6, 4, generator=gen, dtype=torch.float64)},
                  zoo / f"m{i}.safetensors")
    unisub.analyze(zoo, out=tmp_path / "py", plots=False, progress=False)
    outputs = [tmp_path / "py"]
    cpp = _tool()
    assert cpp is not None, "unisub-analyze was not built (the test command builds it)"
    run = subprocess.run([cpp, str(zoo), "--out", str(tmp_path / "cpp")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    outputs.append(tmp_path / "cpp")
    for out in outputs:
        report = _strict_loads((out / "report.json").read_text())
        for slot_file in (out / "slots").glob("*.json"):
            _strict_loads(slot_file.read_text())
        frozen = report["slots"]["frozen"]
        assert frozen["energy"]["mean_share"] == 1.0 and frozen["energy"]["centred"] == 0.0
        for mode in ("out", "in"):
            mr = frozen["modes"][mode]
            assert mr["rank"] == 1 and mr["eigengap"]["sigma_ratio"] is None
            assert mr["null"]["components_above_mp_edge"] == 0
            assert all(v == 0.0 for v in mr["null"]["gaussian_stack_eigenvalues"])
        assert report["slots"]["moving"]["modes"]["out"]["eigengap"]["sigma_ratio"] > 1


@pytest.mark.parametrize("M, m, n", [(6, 20, 8), (12, 10, 3), (4, 30, 12)])
def test_reported_gaussian_null_matches_gaussian_stacks(M, m, n, gen):
    """The report's Gaussian null for a centred stack of M models (p = m, N = n·(M − 1)) against a
    Monte Carlo of centred i.i.d. Gaussian stacks of that shape and total energy: per eigenvalue,
    the sample means differ by at most 6 standard errors (a false alarm has probability ~1e-7 per
    eigenvalue), plus rounding."""
    draws = 60
    direct, drawn = [], []
    for s in range(draws):
        X = torch.randn(M, m, n, generator=gen, dtype=torch.float64)
        acc = unisub.SubspaceAccumulator(modes=("out",)).update(X)
        sub = acc.finalize()
        ev = sub.eigenvalues["out"]
        direct.append(ev)
        rep = metrics.slot_report(sub, acc, None, null_seed=s)
        null = rep["modes"]["out"]["null"]
        assert null["shape"] == [m, n * (M - 1)]
        # each draw is scaled to the stack's own energy: compare on the scale of the expected energy
        g = torch.tensor(null["gaussian_stack_eigenvalues"], dtype=torch.float64)
        drawn.append(g * (m * n * (M - 1)) / float(ev.sum()))
        direct[-1] = ev * (m * n * (M - 1)) / float(ev.sum())
    direct, drawn = torch.stack(direct), torch.stack(drawn)
    se = (direct.var(0) / draws + drawn.var(0) / draws).sqrt()
    assert torch.all((direct.mean(0) - drawn.mean(0)).abs() <= 6 * se + 1e-12 * direct.mean(0)[0])
    # reproducible: the same seed gives the same sample, another seed another one
    assert torch.equal(nulls.gaussian_stack(m, n * (M - 1), 7.0, seed=1), nulls.gaussian_stack(m, n * (M - 1), 7.0, seed=1))
    assert not torch.equal(nulls.gaussian_stack(m, n * (M - 1), 7.0, seed=1), nulls.gaussian_stack(m, n * (M - 1), 7.0, seed=2))


# ---- both front ends: the same entries ----

def _tool():
    from conftest import build_dir

    path = build_dir() / "csrc" / "tools" / "unisub-analyze"
    return str(path) if path.is_file() else None


def _same_shape(a, b, where="entry"):
    """Same keys (recursively), same strings, bools, None and integers; floats left to the caller."""
    assert type(a) is type(b), (where, a, b)
    if isinstance(a, dict):
        assert list(sorted(a)) == list(sorted(b)), (where, sorted(a), sorted(b))
        for k in a:
            _same_shape(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _same_shape(x, y, f"{where}[{i}]")
    elif not isinstance(a, float):
        assert a == b, (where, a, b)


def _close(a, b, where="entry", key=""):
    """Numbers to rounding. Values that amplify rounding are compared as the existing cross-front-end
    tests do: square roots of near-zero shares (singular values, reconstruction errors) through their
    squares, angles from eigenvectors absolutely."""
    if isinstance(a, dict):
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", k)
    elif isinstance(a, list) and key in ("singular_values", "scores"):
        x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        if key == "scores":  # up to rotations inside a kept span: compare their Gram
            x, y = x @ x.T, y @ y.T
        else:
            x, y = x.square(), y.square()
        assert (x - y).abs().max() <= 1e-10 * x.abs().max(), where
    elif isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", key)
    elif isinstance(a, float):
        if key in ("principal_angles_deg", "max_sin", "mean_cos2"):
            assert abs(a - b) <= 1e-6, (where, a, b)
        elif where.split(".")[-2:-1] in (["reconstruction_error"], ["reconstruction_error_with_mean"]):
            assert abs(a * a - b * b) <= 1e-12, (where, a, b)
        else:
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)


def test_both_front_ends_give_the_same_entries(tmp_path, gen):
    """The C++ tool's entries are libunisub's: the ones torch.ops.unisub.slot_report / delta_report
    give on the tool's own saved spectra, bit for bit (split halves aside, whose Grams are not
    saved); and Python's entries on the same zoo have the same structure, the same integers (ranks,
    dims, null shapes, counts) and the same numbers to rounding, null spectra included."""
    tool = _tool()
    assert tool is not None, "unisub-analyze was not built (the test command builds it)"
    from fixtures.digits_zoo import build_zoo
    from test_analyze import _delta_zoo

    zoo = tmp_path / "zoo"
    build_zoo(zoo, models=7, steps=10, seed=2, formats=("safetensors",))
    ads = tmp_path / "ads"
    _delta_zoo(ads, 8, gen)
    for src, modes in ((zoo, ["out", "in"]), (ads, ["delta"])):
        out = tmp_path / f"cpp_{src.name}"
        run = subprocess.run([tool, str(src), "--out", str(out), "--modes", *modes, "--energy", "0.8"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        cpp = _strict_loads((out / "report.json").read_text())
        py = unisub.analyze(src, modes=modes, energy=0.8, plots=False, progress=False).report
        assert list(cpp["slots"]) == sorted(py["slots"])
        for index, (key, rep) in enumerate(py["slots"].items()):
            other = cpp["slots"][key]
            _same_shape(rep, other, key)
            _close(rep, other, key)
            # the same code: the library on the tool's saved data gives the tool's entry exactly
            path = out / "subspaces" / f"{key}.safetensors"
            if modes == ["delta"]:
                s = DeltaSubspace.load(path)
                mine = metrics.delta_report(s, null_seed=index)
            else:
                s = Subspace.load(path)
                mine = json.loads(torch.ops.unisub.slot_report(
                    key, s.mean, s.count, True, list(s.bases), [s.eigenvalues[mo] for mo in s.bases],
                    [s.rank(mo) for mo in s.bases], [], [], index, list(metrics.TAUS), list(metrics.ERROR_RANKS)))
                for mo in mine["modes"]:
                    mine["modes"][mo]["split_half"] = other["modes"][mo]["split_half"]
            # how the Gram was computed is not in the saved subspace; the rest follows from it
            assert other["gram"]["gemm"] == "float64" and other["gram"]["rule"] == "auto"
            mine["gram"] = other["gram"]
            assert mine == other, key


def test_null_shares_at_the_rank_are_fractions_of_the_nulls_own_energy():
    # One Gaussian draw's energy differs from the expected total by its sampling error: dividing the
    # draw's top-r energy by the expected total gave shares above 1 (1.012 for an 8-wide mode of
    # 4 adapters). Both null shares are fractions of the null's own energy.
    for seed in range(40):
        ev = torch.rand(8, dtype=torch.float64).sort(descending=True).values
        for r in (1, 4, 8):
            rep = json.loads(torch.ops.unisub.spectrum_report(ev, r, 8, 3, float(ev.sum()) * 1.1, seed, 0,
                                                              [0.9], [1]))
            for key in ("marchenko_pastur_cumulative_at_rank", "gaussian_stack_cumulative_at_rank"):
                assert 0 <= rep["null"][key] <= 1 + 1e-12, (seed, r, key, rep["null"][key])
            if r == 8:
                assert rep["null"]["gaussian_stack_cumulative_at_rank"] == pytest.approx(1, abs=1e-12)


def test_opcheck_tensor_ops_of_the_analysis_core(gen):
    # sorted_eigh traces (a fake kernel) and keeps its schema's promises; the nulls' ops take no
    # tensors (numbers in, a CPU spectrum out) and are not traced
    X = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    G = X.T @ X
    torch.library.opcheck(torch.ops.unisub.sorted_eigh, (G,))
    ev, V = torch.ops.unisub.sorted_eigh(G)
    ref = torch.linalg.eigvalsh(G).flip(0)
    assert (ev - ref).abs().max() <= 1e-13 * ref[0]
    torch.testing.assert_close(V @ torch.diag(ev) @ V.T, G, rtol=0, atol=1e-12 * ref[0].item())
