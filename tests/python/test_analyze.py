"""unisub.analyze end to end on a zoo of real models (digits classifiers, trained in the fixture),
checked against a float64 dense reference in plain torch: stack every model, centre, unfold, SVD."""
import json
import math
import os
import re
import shutil
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
    assert (tmp_path / "cut" / "state" / "partial.rank0.safetensors").exists()
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
    assert not out.exists(), "bad input is found before the output folder is created"
    z2 = _two_models(tmp_path / "x")
    with pytest.raises(CheckpointError, match=r"slot 'i': dtype I32 cannot be analysed"):
        unisub.analyze(z2, slots=["*"], plots=False, progress=False)
    with pytest.raises(CheckpointError, match="no tensor matches --slots nothing"):
        unisub.analyze(z2, slots=["nothing"], plots=False, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(unisub.io.WriteError, match="cannot be created: Not a directory"):
        unisub.analyze(z2, out=blocker / "out", plots=False, progress=False)
    # a corrupt file among good ones: the CLI names it and exits 2, before writing anything
    (z2 / "c.safetensors").write_bytes((z2 / "a.safetensors").read_bytes()[:-5])
    proc = subprocess.run([sys.executable, "-m", "unisub", "analyze", str(z2), "--out", str(tmp_path / "o2"), "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "c.safetensors: slot" in proc.stderr and "past the end" in proc.stderr
    assert not (tmp_path / "o2" / "report.json").exists()


def test_cli_inspect_of_a_file_that_is_no_subspace_exits_2(tmp_path, capsys):
    # used to end in a traceback (exit 1)
    from unisub.cli import main

    z = _two_models(tmp_path)
    (tmp_path / "cut.safetensors").write_bytes(b"\x10")
    for f, msg in ((z / "a.safetensors", "not a unisub subspace file"), (tmp_path / "cut.safetensors", "truncated")):
        assert main(["inspect", str(f)]) == 2
        err = capsys.readouterr().err
        assert f"unisub inspect: error: {f}: " in err and msg in err, err


def test_a_non_finite_checkpoint_is_named(tmp_path):
    # A NaN weight used to surface as torch's "linalg.eigh failed to converge" (CLI: traceback, exit 1).
    z = _two_models(tmp_path)
    save_file({"w": torch.tensor([[1.0, 2, 3], [4, float("nan"), 6], [7, 8, 9], [1, 1, 1]]),
               "i": torch.zeros(4, 3, dtype=torch.int32)}, z / "b.safetensors")
    with pytest.raises(CheckpointError, match=r"b\.safetensors: slot 'w': holds NaN or infinity"):
        unisub.analyze(z, plots=False, progress=False)
    proc = subprocess.run([sys.executable, "-m", "unisub", "analyze", str(z), "--out", str(tmp_path / "o"), "--quiet",
                           "--no-plots"], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "b.safetensors: slot 'w': holds NaN" in proc.stderr, proc.stderr[-2000:]


def test_lora_adapters_factors_with_scaling(tmp_path, gen):
    from test_io_checkpoints import MODS, _adapter

    for i in range(6):
        _adapter(tmp_path / "ads" / f"a{i}", {"r": 4, "lora_alpha": 4 * (i + 1)}, MODS[:2], gen)
    res = unisub.analyze(tmp_path / "ads", slots=["*lora_B*"], plots=False, progress=False, energy=1.0)
    key = "model.layers.0.self_attn.q_proj.lora_B.weight"
    from unisub.io import PeftAdapter

    W = torch.stack([PeftAdapter(tmp_path / "ads" / f"a{i}").get(key).double() for i in range(6)])
    torch.testing.assert_close(res.subspace(key).mean, W.mean(0), rtol=1e-14, atol=1e-14)


# ---- LoRA deltas ΔW = s·B·A: model-space PCA (mode 0) through lora_gram ----

DELTA_MODS = {"model.layers.0.self_attn.q_proj": (12, 10), "model.layers.0.self_attn.v_proj": (12, 10),
              "model.layers.1.mlp.down_proj": (10, 16)}
# three adapter configs, cycled over the models: different base ranks (so one module has
# different ranks across adapters), rank_pattern / alpha_pattern overrides, and rsLoRA
DELTA_CONFIGS = [
    {"r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"v_proj": 5}},
    {"r": 6, "lora_alpha": 16, "use_rslora": True},
    {"r": 3, "lora_alpha": 7, "rank_pattern": {"down_proj": 5}},
]
# (rank, scaling) per config and module, written out by hand from PEFT's rule
DELTA_EXPECT = [
    {"q_proj": (4, 8 / 4), "v_proj": (2, 5 / 2), "down_proj": (4, 8 / 4)},
    {"q_proj": (6, 16 / math.sqrt(6)), "v_proj": (6, 16 / math.sqrt(6)), "down_proj": (6, 16 / math.sqrt(6))},
    {"q_proj": (3, 7 / 3), "v_proj": (3, 7 / 3), "down_proj": (5, 7 / 5)},
]


def _delta_zoo(folder, M, gen):
    """M PEFT adapters (float32 factors as stored by PEFT) around a shared direction; returns,
    per model, {module: (B, A, s)} with the scaling written out by hand."""
    if not torch.classes.unisub.SafetensorsFile.built_with_pcre2():
        pytest.skip("the configs use rank_pattern / alpha_pattern, and libunisub was built without PCRE2")
    shared = {mod: (torch.randn(m, 6, generator=gen), torch.randn(6, n, generator=gen))
              for mod, (m, n) in DELTA_MODS.items()}
    truth = []
    for i in range(M):
        c = i % len(DELTA_CONFIGS)
        d = folder / f"adapter{i:02d}"
        d.mkdir(parents=True)
        tensors, mine = {}, {}
        for mod, (m, n) in DELTA_MODS.items():
            r, s = DELTA_EXPECT[c][mod.rsplit(".", 1)[1]]
            B = shared[mod][0][:, :r] + 0.7 * torch.randn(m, r, generator=gen)
            A = shared[mod][1][:r] + 0.7 * torch.randn(r, n, generator=gen)
            tensors[f"base_model.model.{mod}.lora_A.weight"] = A
            tensors[f"base_model.model.{mod}.lora_B.weight"] = B
            mine[mod] = (B, A, s)
        save_file(tensors, d / "adapter_model.safetensors")
        (d / "adapter_config.json").write_text(json.dumps(DELTA_CONFIGS[c]))
        truth.append(mine)
    return truth


def test_lora_delta_analysis_matches_dense_float64_reference(tmp_path, gen):
    from test_accumulator import check_spectrum, dense_delta

    truth = _delta_zoo(tmp_path / "ads", 10, gen)
    res = unisub.analyze(tmp_path / "ads", modes=["delta"], energy=0.9, eigen_weights=2, plots=False,
                         progress=False, batch_size=3)
    assert sorted(res.slots) == sorted(f"{mod}.delta" for mod in DELTA_MODS), "one delta slot per module, no factors"
    for mod, (m, n) in DELTA_MODS.items():
        models = [t[mod] for t in truth]
        K_ref, ev_ref, V_ref, D = dense_delta(models)
        sub = res.subspace(f"{mod}.delta")
        rep = res.report["slots"][f"{mod}.delta"]
        assert rep["kind"] == "lora_delta" and rep["shape"] == [m, n] and rep["models"] == 10
        assert rep["lora_ranks"] == [b.shape[1] for b, _, _ in models]
        torch.testing.assert_close(sub.scalings, torch.tensor([s for _, _, s in models], dtype=torch.float64),
                                   rtol=1e-15, atol=0)
        k = sub.rank()
        # eigenvalues: relative 1e-10; eigenvector spans: principal angles (see check_spectrum)
        check_spectrum(sub.eigenvalues, ev_ref, sub.eigenvectors, V_ref, k=min(k, 9))
        mr = rep["modes"]["delta"]
        cum = ev_ref.cumsum(0) / ev_ref.sum()
        assert k == mr["rank"] == int((cum >= 0.9 * (1 - 8 * EPS64)).nonzero()[0]) + 1
        torch.testing.assert_close(torch.tensor(mr["cumulative_explained_variance"], dtype=torch.float64), cum,
                                   rtol=0, atol=1e-12)
        W = torch.stack([s * B.double() @ A.double() for B, A, s in models]).reshape(10, -1)
        assert math.isclose(rep["energy"]["mean_share"], 10 * W.mean(0).pow(2).sum().item() / W.pow(2).sum().item(),
                            rel_tol=1e-10)
        # the two materialised eigen-weights against D^T v / σ from the dense stack
        E = sub.eigen_weights.reshape(2, -1).T
        E_ref = D.T @ V_ref[:, :2] / ev_ref[:2].sqrt()
        gap = (ev_ref[1] - ev_ref[2]).item() / ev_ref[0].item()
        assert unisub.metrics.principal_angles(E, E_ref).sin().max() <= 1e-10 / gap
        # split-half stability from K alone, against the dense halves' eigen-weights
        r = k
        spans = []
        for h in (0, 1):
            Dh = W[h::2] - W[h::2].mean(0)
            U, S, _ = torch.linalg.svd(Dh.T, full_matrices=False)
            spans.append(U[:, :min(r, Dh.shape[0] - 1)])
        theta = unisub.metrics.principal_angles(*spans)
        torch.testing.assert_close(torch.tensor(mr["split_half"]["principal_angles_deg"], dtype=torch.float64),
                                   torch.rad2deg(theta), rtol=0, atol=1e-5)


def test_lora_delta_cli_resume_and_errors(tmp_path, gen):
    _delta_zoo(tmp_path / "ads", 6, gen)
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "unisub", "analyze", str(tmp_path / "ads"), "--slots", "*q_proj*",
                           "--modes", "out", "delta", "--eigen-weights", "1", "--out", str(out), "--no-plots"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    # --modes out with factors whose rank differs between adapters: a clear shape error
    assert proc.returncode == 2 and "differs from" in proc.stderr, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "unisub", "analyze", str(tmp_path / "ads"), "--slots", "*q_proj*",
                           "--modes", "delta", "--eigen-weights", "1", "--out", str(out), "--no-plots"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    key = "model.layers.0.self_attn.q_proj.delta"
    assert key in proc.stdout and " delta " in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert list(report["slots"]) == [key] and report["options"]["modes"] == ["delta"]
    f = out / "subspaces" / f"{key}.safetensors"
    from unisub.subspace import DeltaSubspace

    sub = DeltaSubspace.load(f)
    assert sub.eigen_weights.shape == (1, 12, 10) and sub.mean.shape == (12, 10) and sub.gram.shape == (6, 6)
    with pytest.raises(ValueError, match="LoRA-delta"):
        unisub.Subspace.load(f)
    ins = subprocess.run([sys.executable, "-m", "unisub", "inspect", str(f)], env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert ins.returncode == 0 and "DeltaSubspace" in ins.stdout and "delta: rank" in ins.stdout

    # an interrupted delta slot resumes bit-identically, with the run's Gram precision (the resumed
    # accumulator once fell back to float64 GEMMs, which changed the last bits)
    def stop(slot, batch):
        if batch == 1:
            raise KeyboardInterrupt

    for precision in ("float64", "float32"):
        opts = dict(modes=["delta"], slots=["*v_proj*"], batch_size=2, plots=False, progress=False, checkpoint_every=0,
                    gram_precision=precision)
        straight, cut = tmp_path / f"straight-{precision}", tmp_path / f"cut-{precision}"
        unisub.analyze(tmp_path / "ads", out=straight, **opts)
        with pytest.raises(KeyboardInterrupt):
            unisub.analyze(tmp_path / "ads", out=cut, on_batch=stop, **opts)
        unisub.analyze(tmp_path / "ads", out=cut, resume=True, **opts)
        name = "model.layers.0.self_attn.v_proj.delta.safetensors"
        assert (straight / "subspaces" / name).read_bytes() == (cut / "subspaces" / name).read_bytes()
        gram = json.loads((cut / "report.json").read_text())["slots"][name[:-len(".safetensors")]]["gram"]
        assert gram["gemm"] == precision, gram

    # delta needs PEFT folders: plain safetensors with LoRA-like names have no scaling
    z = tmp_path / "plain"
    z.mkdir()
    for i in range(2):
        save_file({"m.lora_A.weight": torch.randn(2, 3), "m.lora_B.weight": torch.randn(4, 2)}, z / f"{i}.safetensors")
    with pytest.raises(CheckpointError, match="needs PEFT adapter folders"):
        unisub.analyze(z, modes=["delta"], plots=False, progress=False)
    with pytest.raises(ValueError, match="modes must be"):
        unisub.analyze(z, modes=["model"], plots=False, progress=False)


def test_lora_delta_reads_factors_by_one_rule(tmp_path, gen):
    """A delta slot's factors are read and added by libunisub's add_delta_model (one call a model,
    the rule unisub-analyze follows) where it reads the adapter, and with torch.load for an
    adapter_model.bin: the same slot either way; a non-finite factor is refused naming its file
    and tensor, in both front ends."""
    from safetensors.torch import load_file

    _delta_zoo(tmp_path / "ads", 6, gen)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "ads", mixed)
    for name in ("adapter01", "adapter04"):  # these two read with torch.load
        st = mixed / name / "adapter_model.safetensors"
        torch.save(load_file(st), mixed / name / "adapter_model.bin")
        st.unlink()
    opts = dict(modes=["delta"], slots=["*q_proj*"], plots=False, progress=False, batch_size=4)
    key = "model.layers.0.self_attn.q_proj.delta"
    a, b = unisub.analyze(tmp_path / "ads", **opts), unisub.analyze(mixed, **opts)
    sa, sb = a.subspace(key), b.subspace(key)
    assert torch.equal(sa.gram, sb.gram) and torch.equal(sa.eigenvalues, sb.eigenvalues)
    assert torch.equal(sa.scalings, sb.scalings)

    bad = tmp_path / "ads" / "adapter03" / "adapter_model.safetensors"
    tensors = load_file(bad)
    victim = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[victim][1, 2] = float("nan")
    save_file(tensors, bad)
    slot = "model.layers.0.self_attn.q_proj.lora_A.weight"
    with pytest.raises(CheckpointError, match=re.escape(f"{bad}: slot '{slot}': holds NaN or infinity")) as e:
        unisub.analyze(tmp_path / "ads", **opts)
    assert e.value.path == str(bad) and e.value.slot == slot
    from test_analyze_cpp import tool

    run = subprocess.run([tool(), str(tmp_path / "ads"), "--slots", "*q_proj*", "--modes", "delta", "--out",
                          str(tmp_path / "cpp")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and f"{bad}: slot '{slot}': holds NaN or infinity" in run.stderr, run.stderr
    acc = torch.classes.unisub.DeltaAccumulator(12, 10, True, "cpu")
    with pytest.raises(TypeError, match="model must be a torch.classes.unisub.Checkpoint"):
        acc.add_model(torch.zeros(2), "a", "b", True, 0)


def test_lora_delta_refuses_dora_adapters(tmp_path, gen):
    _delta_zoo(tmp_path / "ads", 4, gen)
    cfg = tmp_path / "ads" / "adapter02" / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "use_dora": True}))
    with pytest.raises(unisub.io.CheckpointError, match=r"adapter02: a DoRA adapter \(use_dora\)"):
        unisub.analyze(tmp_path / "ads", modes=["delta"], plots=False, progress=False)


@pytest.mark.parametrize("kwargs,pattern", [({"taus": [0.9, 2.0]}, r"taus are energy fractions"),
                                            ({"error_ranks": [0, 4]}, r"error_ranks must be positive integers")])
def test_report_options_are_checked(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        unisub.analyze(tmp_path, plots=False, progress=False, **kwargs)
