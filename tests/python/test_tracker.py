"""ConvergenceTracker against float64 references built with plain torch on the same inputs.

Bounds:
- energies (weight, update, gradient): 1e-6 relative for float32 models and 1e-12 for float64
  ones, against ‖UᵀGV‖²/‖G‖² computed in float64 from the same (rounded) tensors; the mean's share
  1 − ‖W − μ‖²/‖W‖² (a difference, possibly near 0) to the same bounds, absolute.
- an update inside the subspace: update energy 1 and every principal angle 0, to 1e-5 (float32:
  the weights' rounding ε‖W‖ against an update of norm ~‖W‖ tilts the estimate by O(√n·ε)) and
  1e-10 (float64); an update orthogonal to it: energy 0 to 1e-10 (float32; exactly Uᵀ(U⊥ C) = O(ε)
  so the energy is O(ε²)), max angle π/2 and projection distance √k to 1e-5.
- a run whose gradients are projected by hand (grad ← U Uᵀ grad) has update and gradient energy
  1 to 1e-5, and the run's subspace lies in the reference to 1e-3 rad (measured: 7e-5).
- updates confined to a basis at known principal angles from the reference: those angles back to
  1e-10 (float64) through the sketch; with 1 % noise added, the largest within 0.02 (measured 3e-3).
- the ring buffer forgets: angles go from π/2 to 0 once orthogonal updates leave the window.
- every=N, CSV round trip (exact floats, NaN kept), TensorBoard scalars, construction errors.
"""
import copy
import csv
import io
import math

import pytest
import torch

from unisub import Subspace
from unisub.tracker import ConvergenceTracker

ENERGY_TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
ANGLE_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def orthonormal(rows, cols, gen, dtype=torch.float64):
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0].to(dtype)


def complement_basis(U, cols, gen):
    """``cols`` orthonormal columns orthogonal to span(U) (float64)."""
    U = U.double()
    X = torch.randn(U.shape[0], cols, generator=gen, dtype=torch.float64)
    X = X - U @ (U.T @ X)
    X = X - U @ (U.T @ X)
    return torch.linalg.qr(X)[0]


def energy_ref(G, U, V):
    """‖Uᵀ G V‖² / ‖G‖² in float64 with plain torch."""
    G = G.double().reshape(G.shape[0], -1)
    C = G
    if U is not None:
        C = U.double().T @ C
    if V is not None:
        C = C @ V.double()
    return (C.square().sum() / G.square().sum()).item()


def assert_rel(got, want, tol, what):
    err = abs(got - want) / abs(want)
    assert err <= tol, f"{what}: got {got!r}, want {want!r} (rel. err {err:.2e} > {tol:.0e})"


class Net(torch.nn.Module):
    def __init__(self, gen, dtype, sizes=(24, 40, 32, 12)):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=dtype) for a, b in zip(sizes, sizes[1:]))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) / math.sqrt(p.shape[-1]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = torch.tanh(x)
        return x


def perturb_(model, gen, scale=0.3):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def random_grads_(model, gen):
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_energies_match_float64_reference(dtype, gen):
    model = Net(gen, dtype)
    W = {n: p for n, p in model.named_parameters()}
    U0 = orthonormal(40, 5, gen, dtype)                     # out only
    V1 = orthonormal(40, 6, gen, dtype)                     # in only
    U2, V2 = orthonormal(12, 3, gen, dtype), orthonormal(32, 4, gen, dtype)  # both sides, with a mean
    mean2 = torch.randn(12, 32, generator=gen, dtype=dtype) / math.sqrt(32)
    sub2 = Subspace(slot="layers.2.weight", mean=mean2, bases={"out": U2, "in": V2},
                    eigenvalues={"out": torch.ones(3, dtype=dtype), "in": torch.ones(4, dtype=dtype)}, count=4)
    spec = {"layers.0.weight": (U0, None), "layers.1.weight": {"in": V1}, "layers.2.weight": sub2}
    bases = {"layers.0.weight": (U0, None), "layers.1.weight": (None, V1), "layers.2.weight": (U2, V2)}
    W0 = {n: W[n].detach().clone() for n in spec}
    tracker = ConvergenceTracker(model, spec)
    perturb_(model, gen)
    random_grads_(model, gen)
    out = tracker.step()
    tol = ENERGY_TOL[dtype]
    for name, (U, V) in bases.items():
        Wn = W[name].detach()
        D = Wn - mean2 if name == "layers.2.weight" else Wn
        assert_rel(out[f"{name}/weight_energy"], energy_ref(D, U, V), tol, f"{name} weight")
        assert_rel(out[f"{name}/update_energy"], energy_ref(Wn - W0[name], U, V), tol, f"{name} update")
        assert_rel(out[f"{name}/grad_energy"], energy_ref(W[name].grad, U, V), tol, f"{name} grad")
    share = 1 - (Wn.double() - mean2.double()).square().sum() / Wn.double().square().sum()
    # a difference of two fractions of ‖W‖² (it may be near 0, or negative): an absolute bound
    assert abs(out["layers.2.weight/mean_share"] - share.item()) <= tol
    assert "layers.0.weight/mean_share" not in out
    for key in ("weight_energy", "update_energy", "grad_energy"):
        vals = [out[f"{n}/{key}"] for n in bases]
        assert out[f"mean/{key}"] == pytest.approx(sum(vals) / len(vals), rel=1e-12)
    assert set(out) == set(tracker.keys)


def test_conv_kernel_is_read_as_cout_by_rest(gen):
    conv = torch.nn.Conv2d(6, 10, 3)
    U, V = orthonormal(10, 3, gen, torch.float32), orthonormal(6 * 9, 5, gen, torch.float32)
    tracker = ConvergenceTracker(conv, {"weight": (U, V)})
    conv.weight.grad = torch.randn(conv.weight.shape, generator=gen)
    out = tracker.step()
    assert_rel(out["weight/weight_energy"], energy_ref(conv.weight.detach(), U, V), 1e-6, "conv weight")
    assert_rel(out["weight/grad_energy"], energy_ref(conv.weight.grad, U, V), 1e-6, "conv grad")
    assert math.isnan(out["weight/update_energy"])  # W = W₀: 0/0
    assert math.isnan(out["weight/max_angle"])  # no update yet


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sides", ["out", "in", "both"])
def test_update_inside_subspace_has_energy_one_and_zero_angles(dtype, sides, gen):
    model = Net(gen, dtype, sizes=(48, 64, 8))
    m, n, k, l = 64, 48, 6, 5  # noqa: E741
    U = orthonormal(m, k, gen, dtype) if sides in ("out", "both") else None
    V = orthonormal(n, l, gen, dtype) if sides in ("in", "both") else None
    tracker = ConvergenceTracker(model, {"layers.0.weight": (U, V)}, window=3)
    name = "layers.0.weight"
    for _ in range(2):
        # C with singular values in [0.5, 1] (a random C may be nearly singular, and its weakest
        # direction would drown in the rounding of W), scaled to an update as large as W
        C = well_conditioned(k if U is not None else m, l if V is not None else n, gen)
        D = (U.double() @ C if U is not None else C)
        D = D @ V.double().T if V is not None else D
        with torch.no_grad():
            model.layers[0].weight.add_((D / D.norm() * model.layers[0].weight.norm()).to(dtype))
        out = tracker.step()
        assert abs(out[f"{name}/update_energy"] - 1) <= ANGLE_TOL[dtype]
        assert 0 <= out[f"{name}/max_angle"] <= ANGLE_TOL[dtype]
        for side in (["out"] if U is not None else []) + (["in"] if V is not None else []):
            assert out[f"{name}/max_angle_{side}"] <= ANGLE_TOL[dtype]
            assert out[f"{name}/distance_{side}"] <= ANGLE_TOL[dtype] * math.sqrt(k)
        assert math.isnan(out[f"{name}/grad_energy"])  # no .grad


@pytest.mark.parametrize("sides", ["out", "both"])
def test_update_orthogonal_to_subspace_has_energy_zero_and_right_angles(sides, gen):
    dtype = torch.float32
    model = Net(gen, dtype, sizes=(48, 64, 8))
    k, l = 6, 5  # noqa: E741
    U = orthonormal(64, k, gen)
    V = orthonormal(48, l, gen) if sides == "both" else None
    Uc = complement_basis(U, k, gen)
    Vc = complement_basis(V, l, gen) if V is not None else None
    tracker = ConvergenceTracker(model, {"layers.0.weight": (U.to(dtype), V.to(dtype) if V is not None else None)})
    C = torch.randn(k, l if V is not None else 48, generator=gen, dtype=torch.float64)
    D = Uc @ C @ Vc.T if V is not None else Uc @ C
    with torch.no_grad():
        model.layers[0].weight.add_((D / D.norm() * model.layers[0].weight.norm()).to(dtype))
    out = tracker.step()
    name = "layers.0.weight"
    # float32: rounding of W and D leaves O(ε) of the update in the subspace, i.e. O(ε²) energy
    assert 0 <= out[f"{name}/update_energy"] <= 1e-10
    assert abs(out[f"{name}/max_angle"] - math.pi / 2) <= 1e-5
    # the update has rank min(k, l) (both sides) or k: the estimate has that many directions, each
    # at π/2 from the reference
    assert abs(out[f"{name}/distance_out"] - math.sqrt(min(k, l) if V is not None else k)) <= 1e-5
    if V is not None:
        assert abs(out[f"{name}/distance_in"] - math.sqrt(l)) <= 1e-5


def well_conditioned(rows, cols, gen):
    """A rows × cols float64 matrix of full rank with singular values spread over [0.5, 1]."""
    r = min(rows, cols)
    S = torch.diag(torch.linspace(0.5, 1, r, dtype=torch.float64))
    return orthonormal(rows, r, gen) @ S @ orthonormal(cols, r, gen).T


def rotated(R, thetas, gen):
    """A basis whose principal angles to span(R) are exactly ``thetas`` (float64)."""
    Rc = complement_basis(R, R.shape[1], gen)
    c, s = torch.cos(thetas), torch.sin(thetas)
    return R * c + Rc * s


def test_recovers_known_angles_through_the_sketch(gen):
    """Updates confined to a basis at known principal angles from the reference: the tracker's
    estimate of the run's subspace (a Gaussian sketch of the window) gives those angles back."""
    dtype = torch.float64
    model = Net(gen, dtype, sizes=(200, 120, 4))  # n = 200 > rank + oversampling: sketched
    k = 4
    R = orthonormal(120, k, gen)
    thetas = torch.tensor([0.05, 0.3, 0.7, 1.2], dtype=torch.float64)
    T = rotated(R, thetas, gen)
    tracker = ConvergenceTracker(model, {"layers.0.weight": (R, None)}, window=4, seed=1)
    for _ in range(3):
        with torch.no_grad():
            model.layers[0].weight.add_(T @ torch.randn(k, 200, generator=gen, dtype=dtype))
        out = tracker.step()
        assert abs(out["layers.0.weight/max_angle"] - 1.2) <= 1e-10
        assert abs(out["layers.0.weight/distance_out"] - torch.sin(thetas).norm().item()) <= 1e-10


def test_noisy_full_rank_updates_give_angles_near_the_signal(gen):
    """Full-rank updates: a rank-4 signal at known angles from the reference plus Gaussian noise
    (spectral norm ~1 % of the signal's). The exact window estimate's largest angle is then within
    ~1e-3 of the signal's; the sketched, streaming one within a few 1e-3 (measured worst of 30
    seeds: 3e-3 from the signal's angle), so a bound of 0.02 leaves a factor 6."""
    dtype = torch.float32
    model = Net(gen, dtype, sizes=(200, 120, 4))
    k = 4
    R = orthonormal(120, k, gen)
    thetas = torch.tensor([0.05, 0.3, 0.7, 1.2], dtype=torch.float64)
    T = rotated(R, thetas, gen)
    tracker = ConvergenceTracker(model, {"layers.0.weight": (R.to(dtype), None)}, window=4)
    for _ in range(7):
        with torch.no_grad():
            D = T @ torch.randn(k, 200, generator=gen, dtype=torch.float64)
            D += 0.005 * torch.randn(120, 200, generator=gen, dtype=torch.float64)
            model.layers[0].weight.add_(D.to(dtype))
        out = tracker.step()
        assert abs(out["layers.0.weight/max_angle"] - 1.2) <= 0.02


def test_window_forgets_old_updates(gen):
    """Updates orthogonal to the reference, then `window` updates inside it: the angles go from π/2
    to 0 once the old updates have left the ring buffer."""
    dtype = torch.float64
    model = Net(gen, dtype, sizes=(30, 50, 4))
    k, window = 3, 3
    U = orthonormal(50, k, gen)
    Uc = complement_basis(U, k, gen)
    tracker = ConvergenceTracker(model, {"layers.0.weight": (U, None)}, window=window)
    angles = []
    for basis in [Uc, Uc] + [U] * window:
        with torch.no_grad():
            model.layers[0].weight.add_(basis @ torch.randn(k, 30, generator=gen, dtype=dtype))
        angles.append(tracker.step()["layers.0.weight/max_angle"])
    assert all(abs(a - math.pi / 2) <= 1e-10 for a in angles[:window])  # an orthogonal update still inside
    assert angles[-1] <= 1e-10


def test_rank_deficient_window_is_compared_on_the_directions_it_has(gen):
    """One rank-1 update inside a rank-4 reference: the estimate keeps the one direction the run
    moved in (not three arbitrary completions), and that direction lies in the reference."""
    dtype = torch.float32
    model = Net(gen, dtype, sizes=(64, 80, 4))
    U = orthonormal(80, 4, gen, dtype)
    tracker = ConvergenceTracker(model, {"layers.0.weight": (U, None)})
    with torch.no_grad():
        x = torch.randn(64, 1, generator=gen)
        model.layers[0].weight.add_(0.01 * (U @ torch.randn(4, 1, generator=gen)) @ x.T)
    out = tracker.step()
    # float32 weights of norm ~9, rounded (ε‖W‖ ~ 5e-7), against an update of norm ~0.2: the one
    # direction is tilted by ~1e-6 (measured worst of 40 seeds: 1.8e-6)
    assert out["layers.0.weight/max_angle"] <= 1e-4
    assert out["layers.0.weight/update_energy"] >= 1 - 1e-6


def test_projected_sgd_run_has_update_energy_one(gen):
    """A real short training run, SGD with gradients projected by hand onto the subspace: every
    update lies in it, so update and gradient energies are 1 and the run's subspace is the
    reference's."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = Net(gen, torch.float32, sizes=(16, 64, 48, 3))
    U = orthonormal(64, 8, gen, torch.float32)   # layers.0.weight: 64 x 16, out side
    V = orthonormal(64, 6, gen, torch.float32)   # layers.1.weight: 48 x 64, in side
    x = torch.randn(256, 16, generator=gen)
    y = torch.randint(0, 3, (256,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with ConvergenceTracker(model, {"layers.0.weight": (U, None), "layers.1.weight": (None, V)}, window=4) as tracker:
        for step in range(15):
            idx = torch.randint(0, 256, (32,), generator=gen)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            with torch.no_grad():
                g0, g1 = model.layers[0].weight.grad, model.layers[1].weight.grad
                g0.copy_(U @ (U.T @ g0))
                g1.copy_((g1 @ V) @ V.T)
            opt.step()
            out = tracker.step()
            opt.zero_grad()
            for name in ("layers.0.weight", "layers.1.weight"):
                assert abs(out[f"{name}/update_energy"] - 1) <= 1e-5, (step, out)
                assert abs(out[f"{name}/grad_energy"] - 1) <= 1e-5, (step, out)
            # SGD steps are small against W, so W's float32 rounding tilts the estimate more than
            # above (measured worst over 6 seeds: 7e-5)
            assert out["layers.0.weight/max_angle_out"] <= 1e-3
            assert out["layers.1.weight/max_angle_in"] <= 1e-3
            # the other layers' weights were not projected: their energy is well below 1
        assert out["mean/update_energy"] == pytest.approx(1, abs=1e-5)


def test_every_n_steps_skips_and_measures_updates_since_last_tracked(gen, tmp_path):
    dtype = torch.float64
    model = Net(gen, dtype)
    U = orthonormal(40, 5, gen, dtype)
    W0 = model.layers[0].weight.detach().clone()
    tracker = ConvergenceTracker(model, {"layers.0.weight": (U, None)}, every=3, csv=tmp_path / "t.csv")
    for step in range(1, 8):
        perturb_(model, gen, 0.1)
        out = tracker.step()
        if step % 3:
            assert out == {}
        else:
            W = model.layers[0].weight.detach()
            assert_rel(out["layers.0.weight/update_energy"], energy_ref(W - W0, U, None), 1e-12, "update")
    tracker.close()
    rows = list(csv.DictReader(open(tmp_path / "t.csv", newline="")))
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert tracker.step(global_step=9) != {} and tracker.step(global_step=10) == {}


def test_csv_round_trips(gen, tmp_path):
    model = Net(gen, torch.float32)
    U = orthonormal(40, 5, gen, torch.float32)
    V = orthonormal(32, 4, gen, torch.float32)
    results = []
    with ConvergenceTracker(model, {"layers.0.weight": (U, None), "layers.2.weight": (None, V)},
                            log_dir=tmp_path) as tracker:
        for step in range(3):
            perturb_(model, gen, 0.1)
            if step == 1:
                random_grads_(model, gen)
            results.append(tracker.step())
    with open(tmp_path / "convergence.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ["step", *tracker.keys]
    assert len(rows) == 3
    for i, (row, res) in enumerate(zip(rows, results)):
        assert int(row[0]) == i + 1
        for key, text in zip(header[1:], row[1:]):
            value = float(text)
            assert (math.isnan(value) and math.isnan(res[key])) or value == res[key], key
    assert math.isnan(results[0]["layers.0.weight/grad_energy"])  # no gradient yet: NaN, written as nan
    assert not math.isnan(results[1]["layers.0.weight/grad_energy"])


def test_csv_rows_are_on_disk_before_close(gen, tmp_path):
    model = Net(gen, torch.float32)
    tracker = ConvergenceTracker(model, {"layers.0.weight": (orthonormal(40, 5, gen, torch.float32), None)},
                                 csv=tmp_path / "run.csv")
    perturb_(model, gen)
    tracker.step()
    with open(tmp_path / "run.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 2  # header + the row, flushed
    tracker.close()
    tracker.close()  # idempotent


def test_tensorboard_event_file_is_written(gen, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = Net(gen, torch.float32)
    U = orthonormal(40, 5, gen, torch.float32)
    results = []
    with ConvergenceTracker(model, {"layers.0.weight": (U, None)}, tensorboard=tmp_path / "tb") as tracker:
        for _ in range(2):
            perturb_(model, gen, 0.1)
            results.append(tracker.step())
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "layers.0.weight/update_energy" in scalars and "mean/max_angle" in scalars
    assert "layers.0.weight/grad_energy" not in scalars  # NaN values are not logged
    events = acc.Scalars("layers.0.weight/update_energy")
    assert [e.step for e in events] == [1, 2]
    for e, res in zip(events, results):
        assert e.value == pytest.approx(res["layers.0.weight/update_energy"], rel=1e-6)


def test_window_zero_turns_angles_off(gen):
    model = Net(gen, torch.float32)
    tracker = ConvergenceTracker(model, {"layers.0.weight": (orthonormal(40, 5, gen, torch.float32), None)}, window=0)
    perturb_(model, gen)
    out = tracker.step()
    assert not any("angle" in k or "distance" in k for k in out)
    assert tracker.layers[0].previous is None  # no copy of the weights kept for updates


def test_non_finite_weights_give_nan_angles_until_the_update_leaves_the_window(gen):
    # A diverged step (NaN/inf weights) used to make every later step() raise
    # "unisub.orthonormalize: A contains NaN or infinity" until the tracker was rebuilt.
    model = Net(gen, torch.float32)
    tracker = ConvergenceTracker(model, {"layers.0.weight": (orthonormal(40, 5, gen, torch.float32), None)},
                                 window=3, seed=0)
    perturb_(model, gen)
    assert math.isfinite(tracker.step()["layers.0.weight/max_angle"])
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            saved = model.layers[0].weight.clone()
            model.layers[0].weight[0, 0] = bad
        out = tracker.step()
        assert math.isnan(out["layers.0.weight/max_angle"]) and math.isnan(out["layers.0.weight/weight_energy"])
        with torch.no_grad():
            model.layers[0].weight.copy_(saved)
        for _ in range(4):  # the two non-finite updates (to the bad weight and back) leave the window of 3
            perturb_(model, gen)
            out = tracker.step()
        assert math.isfinite(out["layers.0.weight/max_angle"]) and math.isfinite(out["layers.0.weight/weight_energy"])


def test_separate_reference(gen):
    """Energies use `subspaces`; angles compare with `reference`, here the orthogonal complement."""
    dtype = torch.float64
    model = Net(gen, dtype, sizes=(30, 50, 4))
    U = orthonormal(50, 3, gen)
    Uc = complement_basis(U, 3, gen)
    spec = {"layers.0.weight": (U, None), "layers.1.weight": (orthonormal(4, 2, gen), None)}
    tracker = ConvergenceTracker(model, spec, reference={"layers.0.weight": (Uc, None)})
    with torch.no_grad():
        model.layers[0].weight.add_(U @ torch.randn(3, 30, generator=gen, dtype=dtype))
        model.layers[1].weight.add_(torch.randn(4, 50, generator=gen, dtype=dtype))
    out = tracker.step()
    assert abs(out["layers.0.weight/update_energy"] - 1) <= 1e-12
    assert abs(out["layers.0.weight/max_angle"] - math.pi / 2) <= 1e-10
    assert "layers.1.weight/max_angle" not in out  # not in the reference: no angles
    assert out["mean/max_angle"] == out["layers.0.weight/max_angle"]


def test_bad_input_fails_at_construction(gen, tmp_path):
    model = Net(gen, torch.float32)
    U = orthonormal(40, 5, gen, torch.float32)
    with pytest.raises(KeyError, match="did you mean 'layers.0.weight'"):
        ConvergenceTracker(model, {"layers.0.weigth": (U, None)})
    with pytest.raises(ValueError, match="rows"):
        ConvergenceTracker(model, {"layers.1.weight": (U, None)})  # layers.1.weight is 32 x 40
    with pytest.raises(ValueError, match="orthonormal"):
        ConvergenceTracker(model, {"layers.0.weight": (2 * U, None)})
    with pytest.raises(ValueError, match="at least 2|matrices"):
        ConvergenceTracker(model, {"layers.0.bias": (U, None)})
    with pytest.raises(ValueError, match="does not track"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)},
                           reference={"layers.2.weight": (orthonormal(12, 2, gen, torch.float32), None)})
    with pytest.raises(ValueError, match="rows"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)},
                           reference={"layers.0.weight": (orthonormal(39, 2, gen, torch.float32), None)})
    with pytest.raises(ValueError, match="every"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)}, every=0)
    with pytest.raises(ValueError, match="window"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)}, window=-1)
    with pytest.raises(ValueError, match="log_dir"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)}, csv=True)
    with pytest.raises(ValueError, match="empty"):
        ConvergenceTracker(model, {})
    assert not list(tmp_path.iterdir())


def _sgd_steps(model, tracker, grads, lr=0.05):
    out = []
    for g in grads:
        with torch.no_grad():
            for p, gp in zip(model.parameters(), g):
                p.grad = gp.clone()
                p.sub_(lr * gp)
        out.append(tracker.step())
    return out


def test_resumed_tracker_continues_exactly(gen, tmp_path):
    """A run interrupted after 3 of 7 steps and resumed from state_dict (through torch.save and a
    weights_only load) returns exactly what the uninterrupted run returns (same seed, same data),
    windows, sketches, W₀ and step count included; the CSV continues with the same rows."""
    dtype = torch.float32
    model = Net(gen, dtype, sizes=(30, 48, 20))  # 48 × 30: out side sketched (rank 3 + 10 < 30)
    initial = copy.deepcopy(model.state_dict())
    U = orthonormal(48, 3, gen, dtype)
    V = orthonormal(30, 4, gen, dtype)
    spaces = {"layers.0.weight": (U, V)}
    grads = [[torch.randn(p.shape, generator=gen, dtype=dtype) for p in model.parameters()] for _ in range(7)]
    kwargs = dict(window=3, every=1, seed=5)

    straight = ConvergenceTracker(model, spaces, csv=tmp_path / "straight.csv", **kwargs)
    expected = _sgd_steps(model, straight, grads)
    straight.close()

    first = Net(gen, dtype, sizes=(30, 48, 20))
    first.load_state_dict(initial)
    tracker = ConvergenceTracker(first, spaces, csv=tmp_path / "resumed.csv", **kwargs)
    got = _sgd_steps(first, tracker, grads[:3])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "tracker": tracker.state_dict()}, buf)
    tracker.close()
    del first, tracker

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    second = Net(gen, dtype, sizes=(30, 48, 20))
    second.load_state_dict(saved["model"])
    tracker = ConvergenceTracker(second, spaces, csv=tmp_path / "resumed.csv", append=True, **kwargs)
    tracker.load_state_dict(saved["tracker"])
    got += _sgd_steps(second, tracker, grads[3:])
    tracker.close()
    for step, (a, b) in enumerate(zip(got, expected), start=1):
        assert a.keys() == b.keys()
        for key in a:
            assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == b[key], (step, key)
    assert (tmp_path / "resumed.csv").read_text() == (tmp_path / "straight.csv").read_text()


def test_load_state_dict_and_append_reject_a_different_tracker(gen, tmp_path):
    model = Net(gen, torch.float64)
    U = orthonormal(40, 5, gen)
    a = ConvergenceTracker(model, {"layers.0.weight": (U, None)}, window=2, seed=0, csv=tmp_path / "a.csv")
    perturb_(model, gen)
    a.step()
    a.close()
    state = a.state_dict()
    with pytest.raises(ValueError, match="other keys"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)}, window=0, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="window, rank or shapes differ"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)}, window=3, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="same seed"):
        ConvergenceTracker(model, {"layers.0.weight": (U, None)}, window=2).load_state_dict(state)
    V = orthonormal(32, 4, gen)
    with pytest.raises(ValueError, match="append=True"):
        ConvergenceTracker(model, {"layers.2.weight": (None, V)}, csv=tmp_path / "a.csv", append=True)
