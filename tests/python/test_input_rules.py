"""Inputs that once crashed, misled or silently lost results, through both front ends (`unisub
analyze` and `unisub-analyze`), which must refuse them alike (exit status 2, one line naming the
file and slot) or handle them as docs/analysis.md and docs/format.md say: weights too large or too
small to square in float64, LoRA scalings that overflow, adapters whose ΔW is not s·B·A (AdaLoRA,
DoRA, other peft_types), adapters with different target modules, slot names of the hashed form,
an earlier run's files in the output folder, lax numbers on the C++ command line."""
import json

import pytest
import torch

import unisub
from test_analyze_cpp import _run_tool
from test_conformance import _python_cli
from unisub.io import save_file


def _both(*args):
    """(C++ run, Python run) of the same arguments."""
    return _run_tool(*args), _python_cli(*args)


def _refused_alike(runs, *needles):
    cpp, py = runs
    for run, name in ((cpp, "unisub-analyze"), (py, "unisub analyze")):
        assert run.returncode == 2, (name, run.stdout, run.stderr)
        line = run.stderr.strip().splitlines()[-1]
        assert "Traceback" not in run.stderr, run.stderr
        for needle in needles:
            assert needle in line, (name, line)
    # one message, whichever front end
    assert cpp.stderr.strip().splitlines()[-1].split("error: ", 1)[1] == py.stderr.strip().splitlines()[-1].split(
        "error: ", 1)[1]


def _models(folder, gen, scale, M=4, dtype=torch.float64):
    folder.mkdir(parents=True)
    for i in range(M):
        save_file({"w": (torch.randn(4, 3, generator=gen, dtype=torch.float64) * scale).to(dtype)},
                  folder / f"m{i}.safetensors")
    return folder


def _adapter(folder, gen, config, mods=("q", "v"), extra=None, r=4, m=6, n=5):
    folder.mkdir(parents=True)
    tensors = {}
    for mod in mods:
        tensors[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(r, n, generator=gen)
        tensors[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(m, r, generator=gen)
    tensors.update(extra or {})
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 8, **config}))
    return folder


@pytest.mark.parametrize("scale, needle", [(3e153, "beyond 2^450"), (1e-300, "below 2^-450")])
def test_weights_beyond_what_float64_can_square_are_refused(tmp_path, gen, scale, needle):
    # before: 3e153 gave a report of null energies and zero explained variance, 1e-300 a report of
    # identical models (every square underflowed), 1e200 an eigensolver failure
    zoo = _models(tmp_path / "zoo", gen, scale)
    runs = _both(zoo, "--out", tmp_path / "o")
    _refused_alike(runs, "m0.safetensors", "slot 'w'", needle, "rescale the model")


def test_weights_inside_the_range_are_analysed(tmp_path, gen):
    zoo = _models(tmp_path / "zoo", gen, 1e120)
    res = unisub.analyze(zoo, out=tmp_path / "o", plots=False, progress=False)
    energy = res.report["slots"]["w"]["energy"]
    assert all(isinstance(v, float) and v > 0 for v in (energy["total"], energy["centred"]))


def test_an_all_zero_model_is_taken(tmp_path, gen):
    zoo = _models(tmp_path / "zoo", gen, 1.0)
    save_file({"w": torch.zeros(4, 3, dtype=torch.float64)}, zoo / "m9.safetensors")
    unisub.analyze(zoo, out=tmp_path / "o", plots=False, progress=False)


def test_a_gram_that_overflows_is_an_error_naming_it_not_an_eigensolver_failure():
    # the Python API takes tensors directly, past the reading rule: its finalisation checks the Gram
    acc = unisub.SubspaceAccumulator((3, 4), modes=("out",))
    acc.update([torch.randn(3, 4, dtype=torch.float64) * 1e200 for _ in range(3)])
    with pytest.raises(ValueError, match="overflows float64"):
        acc.finalize(energy=0.9)


def test_a_lora_scaling_beyond_the_range_is_refused_in_delta_mode(tmp_path, gen):
    ads = tmp_path / "ads"
    for i in range(4):
        _adapter(ads / f"a{i}", gen, {"lora_alpha": 1e300})
    _refused_alike(_both(ads, "--out", tmp_path / "o", "--modes", "delta"), "a0", "LoRA scaling", "beyond 2^450")


def test_a_scaled_lora_b_that_overflows_float32_names_the_scaling(tmp_path, gen):
    ads = tmp_path / "ads"
    for i in range(4):
        _adapter(ads / f"a{i}", gen, {"lora_alpha": 1e39})
    _refused_alike(_both(ads, "--out", tmp_path / "o"), "lora_B.weight", "NaN or infinity", "LoRA scaling s = 2.5e+38")


@pytest.mark.parametrize("case", ["adalora_config", "adalora_tensors", "dora_tensors", "other_peft_type"])
def test_adapters_whose_weight_change_is_not_s_b_a_are_refused_in_delta_mode(tmp_path, gen, case):
    config, extra, needle = {}, {}, ""
    if case == "adalora_config":
        config, needle = {"peft_type": "ADALORA"}, "peft_type 'ADALORA'"
    elif case == "adalora_tensors":
        extra = {"base_model.model.q.lora_E.weight": torch.zeros(4, 1), "base_model.model.q.ranknum": torch.ones(())}
        needle = "AdaLoRA"
    elif case == "dora_tensors":  # a DoRA adapter whose config lacks use_dora
        extra, needle = {"base_model.model.q.lora_magnitude_vector": torch.ones(6)}, "DoRA"
    else:
        config, needle = {"peft_type": "VERA"}, "peft_type 'VERA'"
    ads = tmp_path / "ads"
    for i in range(4):
        _adapter(ads / f"a{i}", gen, config, extra=extra)
    _refused_alike(_both(ads, "--out", tmp_path / "o", "--modes", "delta"), "a0", needle, "--modes out in")


def test_a_lora_peft_type_is_analysed(tmp_path, gen):
    ads = tmp_path / "ads"
    for i in range(4):
        _adapter(ads / f"a{i}", gen, {"peft_type": "LORA"})
    res = unisub.analyze(ads, modes=["delta"], plots=False, progress=False)
    assert sorted(res.slots) == ["q.delta", "v.delta"]


def test_a_module_missing_from_some_adapters_is_skipped_unless_named(tmp_path, gen):
    # adapters trained on different target modules: before, --modes delta failed on the first
    # module one adapter lacks, while --modes out in skipped it
    ads = tmp_path / "ads"
    for i in range(4):
        _adapter(ads / f"a{i}", gen, {}, mods=("q", "v") if i != 3 else ("q",))
    cpp, py = _both(ads, "--out", tmp_path / "cpp", "--modes", "delta")
    assert cpp.returncode == 0, cpp.stderr
    assert py.returncode == 0, py.stderr
    report = json.loads((tmp_path / "cpp" / "report.json").read_text())
    assert list(report["slots"]) == ["q.delta"]
    assert "v.lora_A.weight: missing" in report["skipped"]["v.delta"] and "a3" in report["skipped"]["v.delta"]
    res = unisub.analyze(ads, modes=["delta"], plots=False, progress=False)
    assert res.report["skipped"]["v.delta"] == report["skipped"]["v.delta"]
    # named, it is an error naming the adapter
    _refused_alike(_both(ads, "--out", tmp_path / "o", "--modes", "delta", "--slots", "v.*"), "a3", "missing")


def test_a_plain_slot_name_of_the_hashed_form_gets_a_file_of_its_own(tmp_path, gen):
    hashed = unisub.analysis.slot_file_stem("enc/w")
    assert hashed.startswith("enc_w-") and len(hashed) == len("enc_w-") + 16
    assert unisub.analysis.slot_file_stem(hashed) not in (hashed, "enc_w")
    assert unisub.analysis.slot_file_stem("enc_w") == "enc_w"
    assert unisub.analysis.slot_file_stem("w-0123456789ABCDEF") == "w-0123456789ABCDEF"  # not lowercase hex
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(4):
        save_file({"enc/w": torch.randn(3, 4, generator=gen), hashed: torch.randn(3, 4, generator=gen) + 5},
                  zoo / f"m{i}.safetensors")
    res = unisub.analyze(zoo, out=tmp_path / "o", plots=False, progress=False)
    assert len(list((tmp_path / "o" / "subspaces").glob("*.safetensors"))) == 2
    assert res.subspace("enc/w").mean.mean().abs() < 2 < res.subspace(hashed).mean.mean()


def test_a_fresh_run_forgets_an_earlier_runs_files(tmp_path, gen):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    for i in range(4):
        save_file({"a": torch.randn(3, 4, generator=gen), "b": torch.randn(3, 4, generator=gen)}, first / f"m{i}.safetensors")
        save_file({"c": torch.randn(3, 4, generator=gen)}, second / f"m{i}.safetensors")
    out = tmp_path / "o"
    unisub.analyze(first, out=out, plots=True, progress=False)
    (out / "notes.txt").write_text("mine")
    assert (out / "plots" / "a.png").exists()
    for run in (lambda: _run_tool(second, "--out", out), lambda: _python_cli(second, "--out", out)):
        assert run().returncode == 0
        assert sorted(p.name for p in (out / "subspaces").iterdir()) == ["c.safetensors"]
        assert not (out / "plots").exists() or not list((out / "plots").glob("a*.png"))
        assert (out / "notes.txt").read_text() == "mine"  # files the folder format does not name stay
    res = unisub.analysis.AnalysisResult(json.loads((out / "report.json").read_text()), out)
    with pytest.raises(KeyError):
        res.subspace("a")


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "1e9"], "--batch-size takes an integer, got '1e9'"),
    (["--rank", "2x"], "--rank takes an integer, got '2x'"),
    (["--energy", "0.5junk"], "--energy takes a number, got '0.5junk'"),
    (["--max-gram-bytes", "4e9"], "--max-gram-bytes takes an integer, got '4e9'"),
    (["--rank", "0"], "--rank must be a positive integer, got 0"),
    (["--rank", "-1"], "--rank must be a positive integer, got -1"),
    (["--rank", "99999999999999999999"], "out of range"),
    (["--modes", "out", "out"], "--modes takes each mode once, got 'out' twice"),
])
def test_the_tools_numbers_and_modes_are_read_whole(tmp_path, gen, args, needle):
    # std::stoll / std::stod read "1e9" as 1 and "2x" as 2; --rank 0 meant "no limit"
    zoo = _models(tmp_path / "zoo", gen, 1.0)
    run = _run_tool(zoo, "--out", tmp_path / "o", *args)
    assert run.returncode == 2, run.stderr
    assert needle in run.stderr
    assert not (tmp_path / "o").exists()


def test_slots_matching_only_unanalysable_tensors_say_why(tmp_path, gen):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(4):
        save_file({"w": torch.randn(3, 4, generator=gen), "v": torch.randn(5, generator=gen), "z": torch.zeros(0, 3)},
                  zoo / f"m{i}.safetensors")
    _refused_alike(_both(zoo, "--out", tmp_path / "o", "--slots", "v"), "no tensor that matches --slots v can be analysed",
                   "--include-1d")
    _refused_alike(_both(zoo, "--out", tmp_path / "o", "--slots", "z"), "z: empty shape [0, 3]")


def test_a_file_name_that_is_not_utf8_is_named_by_both(tmp_path, gen):
    import os

    zoo = _models(tmp_path / "zoo", gen, 1.0)
    os.rename(zoo / "m3.safetensors", os.fsencode(zoo) + b"/m\xff\xfe.safetensors")
    _refused_alike(_both(zoo, "--out", tmp_path / "o"), "m\\xff\\xfe.safetensors", "valid UTF-8")
    assert not (tmp_path / "o").exists()


def test_a_hard_link_to_a_model_is_the_same_model(tmp_path, gen):
    import os

    zoo = _models(tmp_path / "zoo", gen, 1.0)
    os.link(zoo / "m0.safetensors", zoo / "m9.safetensors")  # before: analysed as a fifth model
    _refused_alike(_both(zoo, "--out", tmp_path / "o"), "m9.safetensors", "given twice", "m0.safetensors")


def test_a_folder_no_run_has_used_keeps_its_files(tmp_path, gen):
    # the fresh-run cleanup is for an earlier run's files, found by its state/run.json
    zoo = _models(tmp_path / "zoo", gen, 1.0)
    out = tmp_path / "myproject"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "figure1.png").write_bytes(b"png")
    (out / "report.json").write_text("{}")
    run = _run_tool(zoo, "--out", out)
    assert run.returncode == 0, run.stderr
    assert (out / "plots" / "figure1.png").read_bytes() == b"png"


def test_a_subfolder_with_a_non_utf8_name_and_no_model_is_ignored(tmp_path, gen):
    import os

    zoo = _models(tmp_path / "zoo", gen, 1.0)
    os.mkdir(os.fsencode(zoo) + b"/caf\xe9-notes")
    found, _ = torch.ops.unisub.discover_sources([str(zoo)])
    assert len(found) == 4


def test_the_tool_reads_a_plus_sign_and_an_underflowing_energy_as_numbers(tmp_path, gen):
    zoo = _models(tmp_path / "zoo", gen, 1.0)
    assert _run_tool(zoo, "--out", tmp_path / "o", "--rank", "+2").returncode == 0
    run = _run_tool(zoo, "--out", tmp_path / "o2", "--energy", "1e-400")
    assert run.returncode == 2 and "--energy must lie in (0, 1], got 0" in run.stderr
