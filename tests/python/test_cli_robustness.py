"""`unisub analyze` (and the readers under it) on hostile input: every refusal is one line naming
what is wrong, with exit status 2 and no output folder, never a traceback; Ctrl-C is one line and
exit status 130."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import unisub
from unisub.cli import main
from unisub.io import CheckpointError, TorchCheckpoint, discover, save_file

ROOT = Path(__file__).resolve().parents[2]
INT64_MAX = (1 << 63) - 1


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "torch_ops"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "unisub", "analyze", *args], env=_env(), capture_output=True,
                          timeout=timeout)


def _zoo(folder, models=3, shape=(4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(models):
        save_file({"w": torch.randn(*shape, generator=g)}, folder / f"m{i}.safetensors")
    return folder


def _pt_zoo(folder, bad_tensor):
    """Three good .pt state dicts and m9.pt holding ``bad_tensor`` as its 'w'."""
    g = torch.Generator().manual_seed(0)
    folder.mkdir()
    for i in range(3):
        torch.save({"w": torch.randn(4, 3, generator=g)}, folder / f"m{i}.pt")
    torch.save({"w": bad_tensor}, folder / "m9.pt")
    return folder


BAD_TENSORS = {
    "sparse_coo": lambda: torch.randn(4, 3).to_sparse(),
    "sparse_csr": lambda: torch.randn(4, 3).to_sparse_csr(),
    "meta": lambda: torch.empty(4, 3, device="meta"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
def test_pt_non_dense_tensor_is_refused_with_the_headers(tmp_path, kind):
    folder = _pt_zoo(tmp_path / "zoo", BAD_TENSORS[kind]())
    with pytest.raises(CheckpointError, match=r"m9\.pt: slot 'w': .*expected a dense \(strided\) tensor") as e:
        TorchCheckpoint(folder / "m9.pt")
    assert e.value.slot == "w" and e.value.path.endswith("m9.pt")
    if kind != "sparse_coo":
        return  # the command line once, below
    out = tmp_path / "out"
    run = _cli(str(folder), "--out", str(out), "--quiet", "--no-plots")
    stderr = run.stderr.decode()
    assert run.returncode == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "m9.pt: slot 'w': a sparse_coo tensor" in stderr and "dense (strided)" in stderr
    assert not out.exists(), "refused before the output folder is created"


@pytest.mark.parametrize("option", ["--rank", "--batch-size", "--max-gram-bytes", "--eigen-weights"])
@pytest.mark.parametrize("value", [str(INT64_MAX + 1), "99999999999999999999", str(-(1 << 63) - 1)])
def test_integer_options_beyond_int64_are_usage_errors(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(tmp_path), "--out", str(tmp_path / "out"), option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"argument {option}: {value} is out of range" in err and "signed 64-bit integer" in err
    assert str(INT64_MAX) in err and not (tmp_path / "out").exists()


def test_integer_option_beyond_int64_from_the_command_line(tmp_path):
    run = _cli(str(_zoo(tmp_path / "zoo")), "--out", str(tmp_path / "out"), "--rank", "99999999999999999999")
    stderr = run.stderr.decode()
    assert run.returncode == 2 and "Traceback" not in stderr, stderr
    assert "argument --rank: 99999999999999999999 is out of range" in stderr


@pytest.mark.parametrize("name", ["rank", "batch_size", "max_gram_bytes", "eigen_weights"])
def test_api_integer_beyond_int64_is_a_value_error_naming_it(tmp_path, name):
    zoo = _zoo(tmp_path / "zoo")
    with pytest.raises(ValueError, match=rf"analyze: {name} must fit a signed 64-bit integer"):
        unisub.analyze(zoo, progress=False, plots=False, **{name: 1 << 70})
    with pytest.raises(ValueError, match=r"analyze: error_ranks must fit a signed 64-bit integer"):
        unisub.analyze(zoo, progress=False, plots=False, error_ranks=[1, 1 << 64])


def test_eigen_weights_needs_modes_delta(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(_zoo(tmp_path / "zoo")), "--out", str(out), "--eigen-weights", "2", "--modes", "out"])
    assert e.value.code == 2
    assert "--eigen-weights needs --modes delta" in capsys.readouterr().err
    assert not out.exists()


def test_eigen_weights_zero_without_delta_is_accepted(tmp_path):
    # 0 is the default: saying it explicitly asks for nothing, so it is no error
    run = _cli(str(_zoo(tmp_path / "zoo")), "--out", str(tmp_path / "out"), "--eigen-weights", "0", "--quiet",
               "--no-plots")
    assert run.returncode == 0, run.stderr.decode()


def _non_utf8_zoo(tmp_path):
    folder = _zoo(tmp_path / "zoo")
    bad = os.fsencode(folder) + b"/m\xff\xfe.safetensors"
    os.rename(os.fsencode(folder / "m2.safetensors"), bad)
    return folder, bad


def test_non_utf8_file_name_in_a_folder_is_named(tmp_path):
    folder, _ = _non_utf8_zoo(tmp_path)
    with pytest.raises(CheckpointError, match=r"m\\xff\\xfe\.safetensors: file names must be valid UTF-8"):
        discover([folder])
    out = tmp_path / "out"
    run = _cli(str(folder), "--out", str(out), "--quiet", "--no-plots")
    stderr = run.stderr.decode()
    assert run.returncode == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "m\\xff\\xfe.safetensors: file names must be valid UTF-8" in stderr
    assert not out.exists(), "refused while the models are found, before the output folder is created"


def test_non_utf8_path_on_the_command_line_is_named(tmp_path):
    folder, bad = _non_utf8_zoo(tmp_path)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "unisub", "analyze", bad, str(folder / "m0.safetensors"),
                          str(folder / "m1.safetensors"), "--out", str(out), "--quiet", "--no-plots"],
                         env=_env(), capture_output=True, timeout=120)
    stderr = run.stderr.decode()
    assert run.returncode == 2, stderr
    assert "Traceback" not in stderr and "m\\xff\\xfe.safetensors: file names must be valid UTF-8" in stderr
    assert not out.exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    # big enough that the analysis (many slots, a batch per model) is still running once the folder
    # is prepared; skipped where it finishes before the signal lands
    g = torch.Generator().manual_seed(0)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(6):
        save_file({f"l{j}.w": torch.randn(384, 384, generator=g) for j in range(16)}, zoo / f"m{i}.safetensors")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "unisub", "analyze", str(zoo), "--out", str(out), "--batch-size", "1", "--quiet",
           "--no-plots"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "state" / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the folder is prepared once every header is read: the loop is starting
        time.sleep(0.3)
        if proc.poll() is not None:
            pytest.skip(f"the run ended (status {proc.returncode}) before the signal could be sent")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = stderr.decode()
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("unisub analyze: interrupted: rerun the same command with --resume"), stderr
    # and what it says works: the same command with --resume finishes the run
    resumed = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert (out / "report.json").is_file()


def test_ctrl_c_message_without_saved_state(tmp_path):
    # interrupted before the folder was prepared: --resume would find nothing, so it is not offered
    from unisub.cli import _analyze_interrupted, _build_parser

    args = _build_parser().parse_args(["analyze", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "--resume" not in _analyze_interrupted(args)
    (tmp_path / "out" / "state").mkdir(parents=True)
    (tmp_path / "out" / "state" / "run.json").write_text("{}")
    assert "with --resume" in _analyze_interrupted(args)
