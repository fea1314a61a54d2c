"""The two front ends are one engine: `unisub analyze` (Python) and `unisub-analyze` (C++) write the
same output folder byte for byte (report.json apart from its "tool" field), each resumes the other's
interrupted run, and both follow one folder format (docs/format.md): collision-free slot file
names, one model order, a lock against two runs on one folder."""
import json
import os
import subprocess
import sys

import pytest
import torch

import unisub
from test_analyze_cpp import _adapters, _run_tool, tool
from unisub.io import save_file


def _weights_zoo(folder, gen, M=7):
    """Full-weight models whose slot names need the hashed file names ('enc/w' vs 'enc_w', a very
    long name), saved as plain files and as one sharded Hugging Face folder, with a large common
    offset (centring must not lose it)."""
    folder.mkdir(parents=True)
    long_name = "block." * 40 + "weight"
    for i in range(M):
        tensors = {"enc/w": torch.randn(6, 5, generator=gen) + 10, "enc_w": torch.randn(4, 3, generator=gen).half(),
                   long_name: torch.randn(3, 8, generator=gen, dtype=torch.float64)}
        if i == 2:  # one model as a Hugging Face folder in two shards
            d = folder / "m2"
            d.mkdir()
            (d / "config.json").write_text("{}")
            save_file({k: tensors[k] for k in ("enc/w",)}, d / "model-00001-of-00002.safetensors")
            save_file({k: tensors[k] for k in ("enc_w", long_name)}, d / "model-00002-of-00002.safetensors")
            weight_map = {"enc/w": "model-00001-of-00002.safetensors", "enc_w": "model-00002-of-00002.safetensors",
                          long_name: "model-00002-of-00002.safetensors"}
            (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        else:
            save_file(tensors, folder / f"m{i}.safetensors")
    return folder, long_name


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _python_cli(*args):
    return subprocess.run([sys.executable, "-m", "unisub", "analyze", *map(str, args), "--no-plots", "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=300)


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[-2] != "state" and p.name != "report.json"}


def _report(out):
    report = json.loads((out / "report.json").read_text())
    return report.pop("tool"), report


def _same_folders(a, b):
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs between the front ends"
    (ta, ra), (tb, rb) = _report(a), _report(b)
    assert {ta, tb} == {"unisub analyze", "unisub-analyze"}
    assert ra == rb
    assert (a / "state" / "run.json").read_bytes() == (b / "state" / "run.json").read_bytes()


@pytest.fixture
def weights(tmp_path, gen):
    return _weights_zoo(tmp_path / "zoo", gen)


def test_full_weights_identical_output_folders(weights, tmp_path):
    zoo, long_name = weights
    tool()
    assert _python_cli(zoo, "--out", tmp_path / "py", "--energy", "0.8", "--batch-size", "3").returncode == 0
    run = _run_tool(zoo, "--out", tmp_path / "cpp", "--energy", "0.8", "--batch-size", "3")
    assert run.returncode == 0, run.stderr
    _same_folders(tmp_path / "py", tmp_path / "cpp")
    stems = sorted(p.stem for p in (tmp_path / "py" / "subspaces").iterdir())
    assert len(stems) == 3 and "enc_w" in stems, "'enc/w' and 'enc_w' keep a file each"
    assert all(len(s.encode()) <= 120 for s in stems)
    assert unisub.analysis.slot_file_stem("enc/w") != "enc_w"
    result = unisub.analysis.AnalysisResult(json.loads((tmp_path / "py" / "report.json").read_text()), tmp_path / "py")
    assert result.subspace(long_name).slot == long_name


def test_adapters_with_patterns_and_rslora_identical_output_folders(tmp_path, gen):
    ads = _adapters(tmp_path, gen)  # ranks differ between adapters, rank/alpha patterns, rsLoRA
    # (LoRA ranks differ between these adapters, so their factors have no common shape: deltas only)
    args = ["--modes", "delta", "--energy", "0.9", "--eigen-weights", "2", "--batch-size", "5"]
    tool()
    py = _python_cli(ads, "--out", tmp_path / "py", *args)
    assert py.returncode == 0, py.stderr
    run = _run_tool(ads, "--out", tmp_path / "cpp", *args)
    assert run.returncode == 0, run.stderr
    _same_folders(tmp_path / "py", tmp_path / "cpp")


def test_model_order_is_the_paths_not_the_command_line(weights, tmp_path):
    zoo, _ = weights
    paths = sorted(zoo.iterdir())
    a = unisub.analyze(paths, out=tmp_path / "a", plots=False, progress=False)
    b = unisub.analyze(list(reversed(paths)), out=tmp_path / "b", plots=False, progress=False)
    assert a.report["sources"] == [str(p) for p in paths]
    assert a.report == b.report
    with pytest.raises(unisub.io.CheckpointError, match="given twice"):
        unisub.analyze([zoo, paths[0]], plots=False, progress=False)


@pytest.mark.parametrize("first", ["python", "cpp"])
def test_each_front_end_resumes_the_others_interrupted_run(weights, tmp_path, first):
    zoo, _ = weights
    tool()
    args = ["--energy", "0.8", "--batch-size", "2"]
    assert _run_tool(zoo, "--out", tmp_path / "straight", *args).returncode == 0
    out = tmp_path / "cut"
    # an interruption in the middle of the second slot, after its first batch's state was saved
    if first == "python":
        seen = []

        def stop(slot, batch):
            seen.append(slot)
            if len(set(seen)) == 2 and batch == 1:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            unisub.analyze(zoo, out=out, energy=0.8, batch_size=2, plots=False, progress=False, checkpoint_every=0,
                           on_batch=stop)
        run = _run_tool(zoo, "--out", out, *args, "--resume")
        assert run.returncode == 0, run.stderr
        assert "resumed: 1 finished slot(s)" in run.stderr
    else:
        assert _run_tool(zoo, "--out", out, *args).returncode == 0
        entries = sorted((out / "slots").glob("*.json"))
        entries[-1].unlink()
        (out / "report.json").unlink()
        kept = {p: p.stat().st_mtime_ns for p in (out / "subspaces").iterdir() if p.stem != entries[-1].stem}
        run = _python_cli(zoo, "--out", out, *args, "--resume")
        assert run.returncode == 0, run.stderr
        assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "a finished slot was recomputed"
    _same_folders(out, tmp_path / "straight") if first == "cpp" else None
    assert _report(out)[1] == _report(tmp_path / "straight")[1]
    assert _files(out) == _files(tmp_path / "straight")


def test_a_second_run_on_one_folder_is_refused(weights, tmp_path):
    zoo, _ = weights
    tool()
    out = tmp_path / "out"
    held = torch.classes.unisub.OutputFolder(str(out), '{"format": "unisub.run/1"}', False, True)
    try:
        run = _run_tool(zoo, "--out", out)
        assert run.returncode == 1 and "is in use by another unisub analysis" in run.stderr, run.stderr
        assert f"pid {os.getpid()}" in run.stderr
        py = _python_cli(zoo, "--out", out)
        assert py.returncode == 1 and "is in use by another unisub analysis" in py.stderr, py.stderr
        assert not (out / "report.json").exists()
    finally:
        held.close()
    assert _run_tool(zoo, "--out", out).returncode == 0, "the lock goes with the run that held it"


def test_output_files_get_the_umask_not_0600(weights, tmp_path):
    zoo, _ = weights
    old = os.umask(0o022)
    try:
        unisub.analyze(zoo, out=tmp_path / "out", plots=False, progress=False)
    finally:
        os.umask(old)
    for p in (tmp_path / "out").rglob("*"):
        if p.is_file() and p.name != "lock":
            assert p.stat().st_mode & 0o777 == 0o644, p


def _file_size_limit(limit):
    """Writes past ``limit`` bytes fail as on a full disk (EFBIG instead of ENOSPC; SIGXFSZ ignored)."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_file(weights, tmp_path):
    zoo, _ = weights
    tool()
    # the C++ tool: a clear message naming the file, exit 1, no file left half-written
    out = tmp_path / "cpp"
    run = subprocess.run([tool(), str(zoo), "--out", str(out)], capture_output=True, text=True, timeout=300,
                         preexec_fn=_file_size_limit(600))
    assert run.returncode == 1, run.stderr
    assert "cannot write '" in run.stderr and "File too large" in run.stderr and "Traceback" not in run.stderr
    for p in out.rglob("*"):
        if p.is_file() and p.suffix in (".safetensors", ".json") and p.parent.name != "state":
            json.loads(p.read_text()) if p.suffix == ".json" else unisub.io.SafetensorsFile(p)  # complete files only
    assert not [p for p in out.rglob("*.partial")]
    # the Python front end: the same error as an OSError subclass, exit 1 from the CLI
    code = ("import sys, torch, unisub\n"
            "try:\n unisub.io.save_file({'t': torch.zeros(1000)}, sys.argv[1])\n"
            "except unisub.io.WriteError as e:\n print(e); sys.exit(3)\n")
    target = tmp_path / "x.safetensors"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=_file_size_limit(1000))
    assert proc.returncode == 3 and f"cannot write '{target}': File too large" in proc.stdout, proc.stderr
    assert list(tmp_path.glob("*x.safetensors*")) == []
    py = subprocess.run([sys.executable, "-m", "unisub", "analyze", str(zoo), "--out", str(tmp_path / "py"),
                         "--no-plots", "--quiet"], env=_env(), capture_output=True, text=True, timeout=300,
                        preexec_fn=_file_size_limit(600))
    assert py.returncode == 1 and "File too large" in py.stderr and "Traceback" not in py.stderr, py.stderr


def test_profile_counts_the_work_of_each_stage(weights, tmp_path):
    zoo, long_name = weights
    tool()
    res = unisub.analyze(zoo, out=tmp_path / "py", plots=False, progress=False, profile=True, batch_size=3)
    prof = res.report["profile"]
    stages = prof["stages"]
    # enc_w is float16 but its batches are thin (3 columns a model): "auto" keeps float64 GEMMs
    assert list(stages)[:8] == ["read", "convert", "gram", "eigh", "split_half", "null", "report", "write"]
    # the nulls and the split halves are timed apart from the rest of the report: once per slot-mode
    assert stages["null"]["calls"] == 3 * 2 and stages["split_half"]["calls"] == 3 * 2
    assert res.report["slots"]["enc_w"]["gram"]["gemm"] == "float64"
    # every byte of every analysed tensor is read once
    sizes = {"enc/w": 6 * 5 * 4, "enc_w": 4 * 3 * 2, long_name: 3 * 8 * 8}
    assert stages["read"]["bytes"] == 7 * sum(sizes.values())
    # the Gram's unavoidable multiply-adds: d(d+1)/2 · (other size) per mode and model
    madds = sum(m * (m + 1) / 2 * n + n * (n + 1) / 2 * m for m, n in ((6, 5), (4, 3), (3, 8))) * 7
    assert stages["gram"]["multiply_adds"] == madds
    assert stages["eigh"]["calls"] == 3 * 2
    assert prof["gemm_rate"]["float64"] > 0 and 0 < stages["gram"]["gemm_fraction"]
    # float32 GEMMs are timed as their own stage, against the float32 GEMM rate
    forced = unisub.analyze(zoo, plots=False, progress=False, profile=True, batch_size=3,
                            gram_precision="float32").report
    assert forced["profile"]["stages"]["gram_float32"]["multiply_adds"] == madds and "gram" not in forced["profile"]["stages"]
    assert prof["gemm_rate"]["float32"] > 0 and 0 < forced["profile"]["stages"]["gram_float32"]["gemm_fraction"]
    assert "gram" in unisub.analysis.format_profile(res.report)
    # the result keeps the profile's text, so the command line prints it without parsing the report
    assert json.loads(res.profile_json) == prof
    lazy = unisub.analyze(zoo, plots=False, progress=False, profile=True, batch_size=3)
    assert isinstance(lazy._report, str), "the report is parsed on first use only"
    table = unisub.analysis.format_profile(lazy)
    assert isinstance(lazy._report, str) and "gram" in table
    assert lazy.report["slots"].keys() == res.report["slots"].keys() and isinstance(lazy._report, dict)
    # without --profile the report has none (so the two front ends' reports stay identical)
    assert "profile" not in unisub.analyze(zoo, plots=False, progress=False).report
    run = _run_tool(zoo, "--out", tmp_path / "cpp", "--batch-size", "3", "--profile")
    assert run.returncode == 0, run.stderr
    cpp = json.loads((tmp_path / "cpp" / "report.json").read_text())["profile"]["stages"]
    for stage in ("read", "gram"):
        for key in ("bytes", "calls", "multiply_adds"):
            assert cpp[stage][key] == stages[stage][key], (stage, key)
    assert "GEMM rate measured in this run" in run.stderr
