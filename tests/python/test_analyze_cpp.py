"""The C++ tool unisub-analyze: same results as the Python path on real models, same verdicts on
mutated headers, clear errors and no output on bad input."""
import json
import math
import shutil
import subprocess

import pytest
import torch

import unisub
from conftest import build_dir
from fixtures.digits_zoo import build_zoo
from test_analysis_core import _close, _same_shape
from test_io_safetensors import fuzz_cases
from unisub.io import CheckpointError, read_header

EPS64 = torch.finfo(torch.float64).eps


def tool():
    path = build_dir() / "csrc" / "tools" / "unisub-analyze"
    if not path.is_file():
        pytest.fail(f"{path} was not built (the test command builds it)")
    return str(path)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo_st")
    build_zoo(folder, models=9, steps=20, seed=1, formats=("safetensors",))
    return folder


def test_matches_python_to_rounding(zoo, tmp_path):
    py = unisub.analyze(zoo, out=tmp_path / "py", energy=0.85, batch_size=4, plots=False, progress=False)
    run = subprocess.run([tool(), str(zoo), "--out", str(tmp_path / "cpp"), "--energy", "0.85", "--batch-size", "4"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "3.weight" in run.stdout and "split sinmax" in run.stdout
    cpp = json.loads((tmp_path / "cpp" / "report.json").read_text())
    assert sorted(cpp["slots"]) == sorted(py.slots)
    for key, rep in py.report["slots"].items():
        other = cpp["slots"][key]
        # one implementation (libunisub) behind both: the same fields, null spectra included, the
        # same integers (ranks, dims, null shapes, counts), the same numbers to rounding
        _same_shape(rep, other, key)
        _close(rep, other, key)
        assert other["shape"] == rep["shape"] and other["models"] == rep["models"] == 9
        assert math.isclose(other["energy"]["mean_share"], rep["energy"]["mean_share"], rel_tol=1e-12)
        assert math.isclose(other["compression"]["ratio"], rep["compression"]["ratio"], rel_tol=1e-12)
        for mode, mr in rep["modes"].items():
            om = other["modes"][mode]
            assert om["rank"] == mr["rank"] and om["rank_at_tau"] == mr["rank_at_tau"]
            e1 = torch.tensor(mr["singular_values"], dtype=torch.float64).pow(2)
            e2 = torch.tensor(om["singular_values"], dtype=torch.float64).pow(2)
            assert (e1 - e2).abs().max() <= 50 * e1.numel() * EPS64 * e1[0]
            assert om["null"]["components_above_mp_edge"] == mr["null"]["components_above_mp_edge"]
            assert math.isclose(om["null"]["mp_upper_edge"], mr["null"]["mp_upper_edge"], rel_tol=1e-12)
            torch.testing.assert_close(torch.tensor(om["split_half"]["principal_angles_deg"], dtype=torch.float64),
                                       torch.tensor(mr["split_half"]["principal_angles_deg"], dtype=torch.float64),
                                       rtol=0, atol=1e-6)
            # The report gives sqrt(1 − captured share); the share carries ~d·ε rounding, so near
            # full rank (true value 0) the square root amplifies it: compare the squares.
            for k, v in mr["reconstruction_error"].items():
                assert abs(om["reconstruction_error"][k] ** 2 - v**2) <= 50 * e1.numel() * EPS64
            for k, v in mr["reconstruction_error_with_mean"].items():
                assert abs(om["reconstruction_error_with_mean"][k] ** 2 - v**2) <= 50 * e1.numel() * EPS64
        s1 = py.subspace(key)
        s2 = unisub.Subspace.load(tmp_path / "cpp" / "subspaces" / f"{key}.safetensors")
        torch.testing.assert_close(s2.mean, s1.mean, rtol=0, atol=1e-15)
        for mode in s1.bases:
            P1, P2 = s1.bases[mode] @ s1.bases[mode].T, s2.bases[mode] @ s2.bases[mode].T
            ev = s1.eigenvalues[mode]
            r = s1.rank(mode)
            gap = (ev[r - 1] - ev[r]) / ev[0] if r < ev.numel() else 1.0
            if gap > 1e-6:
                assert (P1 - P2).abs().max() <= 1e-9 / gap, (key, mode)


def test_both_readers_agree_on_mutated_headers(tmp_path, gen):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    paths = list(fuzz_cases(tmp_path, 300, seed))
    run = subprocess.run([tool(), "--check-headers", *map(str, paths)], capture_output=True, text=True,
                         errors="replace", timeout=300)  # messages may quote the mutated bytes
    assert run.returncode == 1, run.stderr  # some files are bad: status 1, every file still reported
    verdicts = run.stdout.splitlines()
    assert len(verdicts) == len(paths)
    rejected = 0
    for p, line in zip(paths, verdicts):
        try:
            read_header(p)
            py_ok = True
        except CheckpointError:
            py_ok = False
        assert line.startswith("ok ") == py_ok, f"{p}: Python {'accepts' if py_ok else 'rejects'}, C++ says {line}"
        if not py_ok:
            assert str(p) in line
            rejected += 1
    assert rejected > 50
    good = [p for p, line in zip(paths, verdicts) if line.startswith("ok ")][:3]
    assert subprocess.run([tool(), "--check-headers", *map(str, good)], capture_output=True).returncode == 0


def test_bad_input_clear_error_and_no_output(zoo, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in sorted(zoo.iterdir())[:3]:
        (bad / f.name).write_bytes(f.read_bytes())
    victim = sorted(bad.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    run = subprocess.run([tool(), str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2  # bad input: 2, as from `unisub analyze`
    assert f"{victim}: slot" in run.stderr and "past the end" in run.stderr
    assert not (tmp_path / "o").exists()
    run = subprocess.run([tool(), str(tmp_path / "empty_missing"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no such file or folder" in run.stderr
    run = subprocess.run([tool(), str(zoo), "--energy", "2", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode == 2 and "--energy must lie in (0, 1], got 2" in run.stderr


# ---- PEFT adapters: renaming and scaling for the mode Grams, and --modes delta (lora_gram) ----

def _adapters(tmp_path, gen, keep=lambda i: True, M=12):
    from test_analyze import _delta_zoo

    folder = tmp_path / "ads"
    _delta_zoo(folder, M, gen)
    for i in range(M):
        if not keep(i):
            shutil.rmtree(folder / f"adapter{i:02d}")
    return folder


def _run_tool(*args):
    return subprocess.run([tool(), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_lora_deltas_match_python(tmp_path, gen):
    from unisub.subspace import DeltaSubspace

    ads = _adapters(tmp_path, gen)  # three configs: ranks differ between adapters, rank/alpha patterns, rsLoRA
    py = unisub.analyze(ads, out=tmp_path / "py", modes=["delta"], energy=0.9, eigen_weights=2, plots=False,
                        progress=False)
    run = _run_tool(ads, "--out", tmp_path / "cpp", "--modes", "delta", "--energy", "0.9", "--eigen-weights", "2")
    assert run.returncode == 0, run.stderr
    assert " delta " in run.stdout
    cpp = json.loads((tmp_path / "cpp" / "report.json").read_text())
    assert sorted(cpp["slots"]) == sorted(py.slots) == sorted(cpp["options"]["delta_slots"])
    for key, rep in py.report["slots"].items():
        other = cpp["slots"][key]
        _same_shape(rep, other, key)
        _close(rep, other, key)
        for field in ("kind", "shape", "models", "factors", "lora_ranks"):
            assert other[field] == rep[field], field
        torch.testing.assert_close(torch.tensor(other["scalings"]), torch.tensor(rep["scalings"]), rtol=1e-15, atol=0)
        for group in ("energy", "compression"):
            for field, v in rep[group].items():
                assert math.isclose(other[group][field], v, rel_tol=1e-10, abs_tol=1e-12), (group, field)
        mr, om = rep["modes"]["delta"], other["modes"]["delta"]
        assert om["rank"] == mr["rank"] and om["rank_at_tau"] == mr["rank_at_tau"] and om["dim"] == mr["dim"]
        e1 = torch.tensor(mr["singular_values"], dtype=torch.float64).pow(2)
        e2 = torch.tensor(om["singular_values"], dtype=torch.float64).pow(2)
        assert (e1 - e2).abs().max() <= 1e-12 * e1[0]
        for field in ("reconstruction_error", "reconstruction_error_with_mean"):
            for k, v in mr[field].items():
                assert abs(om[field][k] ** 2 - v**2) <= 1e-12, (field, k)
        assert om["null"]["shape"] == mr["null"]["shape"]
        assert math.isclose(om["null"]["mp_upper_edge"], mr["null"]["mp_upper_edge"], rel_tol=1e-12)
        assert om["null"]["components_above_mp_edge"] == mr["null"]["components_above_mp_edge"]
        torch.testing.assert_close(torch.tensor(om["split_half"]["principal_angles_deg"], dtype=torch.float64),
                                   torch.tensor(mr["split_half"]["principal_angles_deg"], dtype=torch.float64),
                                   rtol=0, atol=1e-6)
        # scores up to rotations inside the kept span: compare their Gram V_r Λ_r V_rᵀ
        S1, S2 = (torch.tensor(x["scores"], dtype=torch.float64) for x in (mr, om))
        torch.testing.assert_close(S2 @ S2.T, S1 @ S1.T, rtol=0, atol=1e-10 * e1[0].item())
        s1, s2 = py.subspace(key), DeltaSubspace.load(tmp_path / "cpp" / "subspaces" / f"{key}.safetensors")
        assert (s2.slot, s2.shape, s2.ranks, s2.ids, s2.center) == (s1.slot, s1.shape, s1.ranks, s1.ids, s1.center)
        torch.testing.assert_close(s2.gram, s1.gram, rtol=0, atol=1e-13 * s1.gram.abs().max().item())
        torch.testing.assert_close(s2.scalings, s1.scalings, rtol=1e-15, atol=0)
        P1, P2 = s1.eigenvectors @ s1.eigenvectors.T, s2.eigenvectors @ s2.eigenvectors.T
        r = s1.rank()
        gap = (s1.eigenvalues[r - 1] - s1.eigenvalues[r]) / s1.eigenvalues[0] if r < s1.count else 1.0
        assert (P1 - P2).abs().max() <= 1e-10 / gap
        # the materialised mean ΔW and the two leading unit-norm eigen-weights
        torch.testing.assert_close(s2.mean, s1.mean, rtol=0, atol=1e-12 * s1.mean.abs().max().item())
        assert s2.eigen_weights.shape == s1.eigen_weights.shape == (2, *s1.shape)
        ev = s1.eigenvalues / s1.eigenvalues[0]
        for k in range(2):  # each direction (sign fixed by the same rule) is as stable as its spectral gaps
            gap = min(abs(ev[k] - ev[j]).item() for j in (k - 1, k + 1) if 0 <= j < ev.numel())
            e1, e2 = s1.eigen_weights[k].flatten(), s2.eigen_weights[k].flatten()
            assert abs(e2.norm().item() - 1) <= 1e-10
            assert (e1 - e2).norm() <= 1e-9 / gap, (key, k)


def test_adapter_factors_are_renamed_and_scaled_as_in_python(tmp_path, gen):
    ads = _adapters(tmp_path, gen, keep=lambda i: i % 3 == 1, M=15)  # one config: every factor has rank 6
    for scale in (True, False):
        flag = [] if scale else ["--no-lora-scaling"]
        out = tmp_path / f"cpp{scale}"
        py = unisub.analyze(ads, out=tmp_path / f"py{scale}", slots=["*q_proj*"], modes=["out", "in"], energy=0.9,
                            scale_lora=scale, plots=False, progress=False)
        run = _run_tool(ads, "--out", out, "--slots", "*q_proj*", "--modes", "out", "in", "--energy", "0.9", *flag)
        assert run.returncode == 0, run.stderr
        cpp = json.loads((out / "report.json").read_text())
        assert sorted(cpp["slots"]) == sorted(py.slots) == ["model.layers.0.self_attn.q_proj.lora_A.weight",
                                                            "model.layers.0.self_attn.q_proj.lora_B.weight"]
        for key, rep in py.report["slots"].items():
            for mode, mr in rep["modes"].items():
                e1 = torch.tensor(mr["singular_values"], dtype=torch.float64).pow(2)
                e2 = torch.tensor(cpp["slots"][key]["modes"][mode]["singular_values"], dtype=torch.float64).pow(2)
                assert (e1 - e2).abs().max() <= 1e-12 * e1[0], (scale, key, mode)
    # the scaling matters: 16/sqrt(6) on every lora_B (applied in float32, as the Python reader does)
    b = "model.layers.0.self_attn.q_proj.lora_B.weight"
    on, off = (json.loads((tmp_path / f"cpp{s}" / "report.json").read_text())["slots"][b] for s in (True, False))
    assert math.isclose(on["modes"]["out"]["singular_values"][0] / off["modes"]["out"]["singular_values"][0],
                        16 / math.sqrt(6), rel_tol=1e-6)


def test_lora_delta_errors(zoo, tmp_path, gen):
    run = _run_tool(zoo, "--out", tmp_path / "o", "--modes", "delta")
    assert run.returncode == 2 and "needs PEFT adapter folders" in run.stderr, run.stderr
    ads = _adapters(tmp_path, gen, M=4)
    run = _run_tool(ads, "--out", tmp_path / "o", "--modes", "out", "delta")  # factor ranks differ across adapters
    # (the plan's message, the same from both front ends: "shape [6, 10] differs from [4, 10] in ...")
    assert run.returncode == 2 and "differs from [" in run.stderr, run.stderr
    run = _run_tool(ads, "--out", tmp_path / "o", "--modes", "delta", "--slots", "*embed*")
    assert run.returncode == 2 and "no tensor matches --slots *embed*" in run.stderr, run.stderr
    cfg = ads / "adapter01" / "adapter_config.json"
    cfg.write_text(json.dumps({"r": 6, "lora_alpha": 16, "use_rslora": True, "use_dora": True}))
    run = _run_tool(ads, "--out", tmp_path / "o", "--modes", "delta")
    assert run.returncode == 2 and "adapter01: a DoRA adapter (use_dora)" in run.stderr, run.stderr
    cfg.write_text(json.dumps({"r": 5, "lora_alpha": 16}))  # the stored factors have rank 6
    run = _run_tool(ads, "--out", tmp_path / "o", "--modes", "delta")
    assert run.returncode == 2 and "adapter_config.json gives rank 5 for module" in run.stderr, run.stderr
    cfg.write_text("{not json")
    run = _run_tool(ads, "--out", tmp_path / "o", "--modes", "delta")
    assert run.returncode == 2 and f"{cfg}: cannot read adapter config" in run.stderr, run.stderr
    assert not (tmp_path / "o").exists()
    run = _run_tool(ads, "--out", tmp_path / "o", "--modes", "bogus")
    assert run.returncode == 2 and "--modes takes out, in and/or delta" in run.stderr
    run = _run_tool(ads, "--out", tmp_path / "o", "--eigen-weights", "2")
    assert run.returncode == 2 and "--eigen-weights needs --modes delta" in run.stderr


def test_resume_redoes_only_unfinished_slots(zoo, tmp_path):
    args = [zoo, "--energy", "0.85", "--batch-size", "4"]
    assert _run_tool(*args, "--out", tmp_path / "straight").returncode == 0
    out = tmp_path / "cut"
    assert _run_tool(*args, "--out", out).returncode == 0
    # the state an interruption during the last slot leaves: its entry not yet written, no report
    entries = sorted((out / "slots").glob("*.json"))
    assert len(entries) >= 2
    entries[-1].unlink()
    (out / "report.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "subspaces").iterdir() if p.stem != entries[-1].stem}
    run = _run_tool(*args, "--out", out, "--resume")
    assert run.returncode == 0, run.stderr
    assert f"resumed: {len(entries) - 1} finished slot(s)" in run.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "a finished slot was recomputed"
    straight = json.loads((tmp_path / "straight" / "report.json").read_text())
    assert json.loads((out / "report.json").read_text()) == straight
    # another run's state, or none, is refused before anything is written
    run = _run_tool(zoo, "--energy", "0.8", "--batch-size", "4", "--out", out, "--resume")
    assert run.returncode == 2 and "is from a different run" in run.stderr, "a usage error, as in `unisub analyze`"
    run = _run_tool(*args, "--out", tmp_path / "fresh", "--resume")
    assert run.returncode == 2 and "no saved state" in run.stderr and not (tmp_path / "fresh").exists()
    # without --resume, old entries are forgotten and everything is recomputed
    run = _run_tool(*args, "--out", out)
    assert run.returncode == 0 and "resumed" not in run.stderr


def test_embedding_lora_deltas_match_python(tmp_path, gen):
    from test_io_checkpoints import _embedding_adapter

    for i in range(5):
        _embedding_adapter(tmp_path / "ads" / f"a{i}", 3 + i % 2, 40, 10, 16, gen)
    py = unisub.analyze(tmp_path / "ads", out=tmp_path / "py", modes=["delta"], plots=False, progress=False)
    run = _run_tool(tmp_path / "ads", "--out", tmp_path / "cpp", "--modes", "delta")
    assert run.returncode == 0, run.stderr
    cpp = json.loads((tmp_path / "cpp" / "report.json").read_text())
    key = "model.embed_tokens.delta"
    assert list(cpp["slots"]) == list(py.slots) == [key]
    assert cpp["slots"][key]["shape"] == py.report["slots"][key]["shape"] == [10, 40]
    assert cpp["slots"][key]["lora_ranks"] == [3, 4, 3, 4, 3]
    torch.testing.assert_close(torch.tensor(cpp["slots"][key]["scalings"]), torch.tensor([16 / 3, 4.0, 16 / 3, 4.0, 16 / 3]))
    e1 = torch.tensor(py.report["slots"][key]["modes"]["delta"]["singular_values"], dtype=torch.float64).pow(2)
    e2 = torch.tensor(cpp["slots"][key]["modes"]["delta"]["singular_values"], dtype=torch.float64).pow(2)
    assert (e1 - e2).abs().max() <= 1e-12 * e1[0]


def test_non_finite_weight_names_the_file_and_slot(zoo, tmp_path):
    from unisub.io import SafetensorsFile, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    files = sorted(zoo.iterdir())[:4]
    for f in files:
        (bad / f.name).write_bytes(f.read_bytes())
    victim = bad / files[2].name
    st = SafetensorsFile(victim)
    tensors = {k: st.get(k) for k in st.header.tensors}
    key = sorted(k for k, t in tensors.items() if t.dim() == 2)[0]
    tensors[key][1, 1] = float("nan")
    save_file(tensors, victim)
    run = _run_tool(bad, "--out", tmp_path / "o")
    assert run.returncode == 2 and f"{victim}: slot '{key}': holds NaN or infinity" in run.stderr, run.stderr


def test_model_folders_and_shards_match_python(zoo, tmp_path):
    from unisub.io import SafetensorsFile, save_file

    runs = tmp_path / "runs"
    for i, f in enumerate(sorted(zoo.iterdir())[:6]):
        d = runs / f"m{i}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        if i != 3:
            (d / "model.safetensors").write_bytes(f.read_bytes())
            continue
        # one model saved in two shards with a Hugging Face index
        st = SafetensorsFile(f)
        keys = sorted(st.header.tensors)
        halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, ks in halves.items():
            save_file({k: st.get(k) for k in ks}, d / name)
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {k: name for name, ks in halves.items() for k in ks}}))
        (d / "consolidated.safetensors").write_bytes(f.read_bytes())  # not named by the index: not read
    py = unisub.analyze(runs, out=tmp_path / "py", energy=0.85, plots=False, progress=False)
    run = _run_tool(runs, "--out", tmp_path / "cpp", "--energy", "0.85")
    assert run.returncode == 0, run.stderr
    cpp = json.loads((tmp_path / "cpp" / "report.json").read_text())
    assert cpp["models"] == 6 and sorted(cpp["slots"]) == sorted(py.slots)
    for key, rep in py.report["slots"].items():
        for mode, mr in rep["modes"].items():
            e1 = torch.tensor(mr["singular_values"], dtype=torch.float64).pow(2)
            e2 = torch.tensor(cpp["slots"][key]["modes"][mode]["singular_values"], dtype=torch.float64).pow(2)
            assert (e1 - e2).abs().max() <= 50 * e1.numel() * EPS64 * e1[0], (key, mode)
    # an index naming a shard that is not there is an error, not a silently smaller model
    (runs / "m3" / "model-00002-of-00002.safetensors").unlink()
    run = _run_tool(runs, "--out", tmp_path / "cpp2")
    assert run.returncode == 2 and "index.json: names shard(s) that are not in the folder" in run.stderr, run.stderr


def test_thin_wide_slots_are_read_in_the_plans_batches(tmp_path, gen):
    """Thin models of a large Gram (like LoRA factors: [16, 1024] float16) are read 64 at a time, as
    libunisub's plan says, a square slot --batch-size at a time. Both front ends follow the plan, so
    their folders agree byte for byte, and a run cut inside the thin slot by one front end resumes
    from the same batch boundary in the other, bit for bit."""
    from unisub.io import save_file

    # torch.set_num_threads turns MKL's dynamic threading off, after which libunisub's workers'
    # GEMMs spread over every thread again unless each worker keeps the BLAS to itself
    # (cpu/blas_threads.h): the bytes then differed from the C++ tool's
    torch.set_num_threads(torch.get_num_threads())
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(150):
        save_file({"thin.weight": (torch.randn(16, 1024, generator=gen) * 0.1).half(),
                   "sq.weight": torch.randn(24, 24, generator=gen)}, zoo / f"m{i:03d}.safetensors")
    seen = {}
    unisub.analyze(zoo, out=tmp_path / "py", plots=False, progress=False,
                   on_batch=lambda slot, batch: seen.setdefault(slot, set()).add(batch))
    assert len(seen["thin.weight"]) == 3 and len(seen["sq.weight"]) == 19  # ceil(150 / 64), ceil(150 / 8)
    py = json.loads((tmp_path / "py" / "report.json").read_text())
    # batches of 64 give each half 32 × 16 columns, not thin: float32 GEMMs; the last 22 models are
    gram = py["slots"]["thin.weight"]["gram"]
    assert gram["gemm"] == "float32+float64" and gram["float32_models"] == 128
    run = subprocess.run([tool(), str(zoo), "--out", str(tmp_path / "cpp")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    for sub in ("slots", "subspaces"):
        for f in (tmp_path / "py" / sub).iterdir():
            assert f.read_bytes() == (tmp_path / "cpp" / sub / f.name).read_bytes(), f.name

    def stop(slot, batch):
        if slot == "thin.weight" and batch == 1:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        unisub.analyze(zoo, out=cut, plots=False, progress=False, checkpoint_every=0, on_batch=stop)
    run = subprocess.run([tool(), str(zoo), "--out", str(cut), "--resume"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    for sub in ("slots", "subspaces"):
        for f in (tmp_path / "py" / sub).iterdir():
            assert f.read_bytes() == (cut / sub / f.name).read_bytes(), f.name
