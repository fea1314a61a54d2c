"""unisub.analyze end to end on a zoo of real models (digits classifiers, trained in the fixture),
checked against a float64 dense reference in plain torch: stack every model, centre, unfold, SVD."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unisub
from fixtures.digits_zoo import build_zoo
from unisub.io import CheckpointError, save_file

ROOT = Path(__file__).resolve().parents[2]
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    sds = build_zoo(folder, models=10, steps=25)
    return folder, sds


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "torch_ops"), env.get("PYTHONPATH", "")])
    return env


def dense_reference(sds, key, taus):
    W = torch.stack([sd[key].double().reshape(sd[key].shape[0], -1) for sd in sds])
    M = W.shape[0]
    mu = W.mean(0)
    D = W - mu
    out = {}
    for mode, unf in (("out", torch.cat(list(D), dim=1)), ("in", torch.cat([d.T for d in D], dim=1))):
        U, S, _ = torch.linalg.svd(unf, full_matrices=True)
        ev = S.pow(2)
        ev = torch.cat([ev, ev.new_zeros(unf.shape[0] - ev.numel())])
        cum = ev.cumsum(0) / ev.sum()
        out[mode] = {"U": U, "ev": ev, "cum": cum,
                     "r": {t: int((cum >= t * (1 - 8 * EPS64)).nonzero()[0]) + 1 for t in taus}}
    energy = W.pow(2).sum().item()
    out["mean_share"] = M * mu.pow(2).sum().item() / energy
    out["W"] = W
    return out


def test_zoo_matches_dense_float64_reference(zoo):
    folder, sds = zoo
    res = unisub.analyze(folder, energy=0.9, plots=False, progress=False)
    keys = [k for k, v in sds[0].items() if v.dim() >= 2]
    assert sorted(res.slots) == sorted(keys), "conv and linear weights, not the 1-D biases"
    for key in keys:
        rep = res.report["slots"][key]
        ref = dense_reference(sds, key, (0.5, 0.8, 0.9, 0.95, 0.99))
        sub = res.subspace(key)
        assert rep["models"] == len(sds)
        torch.testing.assert_close(sub.mean, ref["W"].mean(0), rtol=0, atol=1e-14 * ref["W"].abs().max().item())
        assert math.isclose(rep["energy"]["mean_share"], ref["mean_share"], rel_tol=1e-12)
        for mode in ("out", "in"):
            mr, rm = rep["modes"][mode], ref[mode]
            ev = torch.tensor(mr["singular_values"], dtype=torch.float64).pow(2)
            # a Gram eigenvalue is exact to ~ d·ε·λ_max (the Gram route's absolute accuracy)
            assert (ev - rm["ev"]).abs().max() <= 50 * ev.numel() * EPS64 * rm["ev"][0], (key, mode)
            torch.testing.assert_close(torch.tensor(mr["cumulative_explained_variance"], dtype=torch.float64),
                                       rm["cum"], rtol=0, atol=1e-11)
            for t, r in rm["r"].items():
                assert mr["rank_at_tau"][str(t)] == r, (key, mode, t)
            r = mr["rank"]
            assert r == rm["r"][0.9]
            # bases: compare projectors where the cut falls in a real gap
            gap = (rm["ev"][r - 1] - rm["ev"][r]) / rm["ev"][0] if r < rm["ev"].numel() else 1.0
            if gap > 1e-6:
                P, Pref = sub.bases[mode] @ sub.bases[mode].T, rm["U"][:, :r] @ rm["U"][:, :r].T
                assert (P - Pref).abs().max() <= 1e-9 / gap, (key, mode)
            for k, e in mr["reconstruction_error"].items():
                assert math.isclose(e, math.sqrt(max(0.0, 1 - rm["cum"][int(k) - 1].item())), abs_tol=1e-6)


def test_split_half_and_compression_against_dense(zoo):
    from scipy.linalg import subspace_angles

    folder, sds = zoo
    res = unisub.analyze(folder, slots=["5.weight"], modes=["out"], energy=0.8, plots=False, progress=False)
    rep = res.report["slots"]["5.weight"]
    r = rep["modes"]["out"]["rank"]
    halves = [dense_reference(sds[h::2], "5.weight", (0.9,))["out"]["U"][:, :r] for h in (0, 1)]
    theta = sorted(subspace_angles(halves[0].numpy(), halves[1].numpy()))
    got = rep["modes"]["out"]["split_half"]["principal_angles_deg"]
    assert rep["modes"]["out"]["split_half"]["models"] == [5, 5]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.rad2deg(torch.tensor(theta)), rtol=0, atol=1e-6)
    M, (m, n) = len(sds), rep["shape"]
    assert rep["compression"]["ratio"] == pytest.approx(M * m * n / (m * n + m * r + M * r * n))


def test_resume_after_interrupt_is_bit_identical(zoo, tmp_path):
    folder, _ = zoo
    opts = dict(batch_size=3, plots=False, progress=False, checkpoint_every=0)
    unisub.analyze(folder, out=tmp_path / "straight", **opts)

    def stop(slot, batch):
        if slot == "3.weight" and batch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unisub.analyze(folder, out=tmp_path / "cut", on_batch=stop, **opts)
    assert not (tmp_path / "cut" / "report.json").exists()
    assert (tmp_path / "cut" / "state" / "partial.rank0.pt").exists()
    unisub.analyze(folder, out=tmp_path / "cut", resume=True, **opts)
    a = json.loads((tmp_path / "straight" / "report.json").read_text())
    b = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert a["slots"] == b["slots"]
    for f in (tmp_path / "straight" / "subspaces").iterdir():
        assert f.read_bytes() == (tmp_path / "cut" / "subspaces" / f.name).read_bytes(), f.name
    with pytest.raises(ValueError, match="different run"):
        unisub.analyze(folder, out=tmp_path / "cut", resume=True, **{**opts, "energy": 0.5})


def test_torchrun_two_gloo_processes_equal_one(zoo, tmp_path):
    folder, _ = zoo
    one = unisub.analyze(folder, out=tmp_path / "one", plots=False, progress=False, batch_size=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "unisub", "analyze", str(folder), "--out", str(tmp_path / "two"), "--quiet", "--no-plots",
           "--batch-size", "2"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["options"]["world"] == 2
    for key, rep in one.report["slots"].items():
        for mode, mr in rep["modes"].items():
            other = two["slots"][key]["modes"][mode]
            assert mr["rank"] == other["rank"]
            # eigenvalues (σ²) agree to the Gram route's absolute accuracy, ~d·ε·λ_max
            e1 = torch.tensor(mr["singular_values"], dtype=torch.float64).pow(2)
            e2 = torch.tensor(other["singular_values"], dtype=torch.float64).pow(2)
            assert (e1 - e2).abs().max() <= 50 * e1.numel() * EPS64 * e1[0], (key, mode)
        s1 = one.subspace(key)
        s2 = unisub.Subspace.load(tmp_path / "two" / "subspaces" / f"{key}.safetensors")
        torch.testing.assert_close(s2.mean, s1.mean, rtol=1e-13, atol=1e-15)


def test_cli_analyze_plots_and_inspect(zoo, tmp_path):
    folder, _ = zoo
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "unisub", "analyze", str(folder), "--slots", "re:^[05]\\.weight$",
                           "--modes", "out", "--energy", "0.8", "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0.weight" in proc.stdout and "5.weight" in proc.stdout and "3.weight" not in proc.stdout
    assert "analyse: 100%" in proc.stderr, "a progress bar with ETA is shown"
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["0.weight.png", "5.weight.png", "mean_over_slots.png"]
    assert sorted(p.name for p in (out / "subspaces").iterdir()) == ["0.weight.safetensors", "5.weight.safetensors"]
    ins = subprocess.run([sys.executable, "-m", "unisub", "inspect", str(out), "--slot", "5.weight"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert ins.returncode == 0 and "singular values" in ins.stdout and "5.weight" in ins.stdout
    assert not list(out.rglob("*.partial"))


def _two_models(tmp_path, shape2=(4, 3), dtype2=torch.float32):
    (tmp_path / "z").mkdir(parents=True)
    save_file({"w": torch.randn(4, 3), "i": torch.zeros(4, 3, dtype=torch.int32)}, tmp_path / "z" / "a.safetensors")
    save_file({"w": torch.randn(shape2).to(dtype2), "i": torch.zeros(4, 3, dtype=torch.int32)},
              tmp_path / "z" / "b.safetensors")
    return tmp_path / "z"


def test_bad_inputs_fail_early_with_clear_errors_and_no_output(tmp_path):
    z = _two_models(tmp_path, shape2=(3, 4))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"b\.safetensors: slot 'w': shape \[3, 4\] differs from \[4, 3\]"):
        unisub.analyze(z, out=out, plots=False, progress=False)
    assert not (out / "report.json").exists() and not list(out.rglob("*.safetensors"))
    z2 = _two_models(tmp_path / "x")
    with pytest.raises(CheckpointError, match=r"slot 'i': dtype I32 cannot be analysed"):
        unisub.analyze(z2, slots=["*"], plots=False, progress=False)
    with pytest.raises(CheckpointError, match="no tensor matches --slots nothing"):
        unisub.analyze(z2, slots=["nothing"], plots=False, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        unisub.analyze(z2, out=blocker / "out", plots=False, progress=False)
    # a corrupt file among good ones: the CLI names it and exits 2, before writing anything
    (z2 / "c.safetensors").write_bytes((z2 / "a.safetensors").read_bytes()[:-5])
    proc = subprocess.run([sys.executable, "-m", "unisub", "analyze", str(z2), "--out", str(tmp_path / "o2"), "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "c.safetensors: slot" in proc.stderr and "past the end" in proc.stderr
    assert not (tmp_path / "o2" / "report.json").exists()


def test_lora_adapters_factors_with_scaling(tmp_path, gen):
    from test_io_checkpoints import MODS, _adapter

    for i in range(6):
        _adapter(tmp_path / "ads" / f"a{i}", {"r": 4, "lora_alpha": 4 * (i + 1)}, MODS[:2], gen)
    res = unisub.analyze(tmp_path / "ads", slots=["*lora_B*"], plots=False, progress=False, energy=1.0)
    key = "model.layers.0.self_attn.q_proj.lora_B.weight"
    from unisub.io import PeftAdapter

    W = torch.stack([PeftAdapter(tmp_path / "ads" / f"a{i}").get(key).double() for i in range(6)])
    torch.testing.assert_close(res.subspace(key).mean, W.mean(0), rtol=1e-14, atol=1e-14)
