"""One slot plan (libunisub's plan_slots) for both front ends: defaults that survive a real
transformer folder (a Gram beyond the budget is skipped per mode with its reason, a default-selected
tensor that differs between models is skipped, not fatal), the same chosen / skipped lists from
`unisub analyze` and `unisub-analyze`, cost estimates, and the errors (fewer than 2 models, a named
tensor that differs) from both."""
import fnmatch
import json
import random
import re
import subprocess

import pytest
import torch

import unisub
from test_analyze_cpp import tool
from unisub.io import CheckpointError, plan, save_file, select

WORD = "embeddings.word_embeddings.weight"


def _bert_like(folder, M, gen, vocab=3000, hidden=12, heads_out=None):
    """M Hugging Face folders of a BERT-like model scaled down: a vocab × hidden word embedding, one
    layer's attention and FFN, LayerNorm vectors, an integer position_ids buffer; with `heads_out`
    (one label count per model) a SEQ_CLS head `classifier.weight` [labels, hidden] of its own."""
    for i in range(M):
        d = folder / f"model{i}"
        d.mkdir(parents=True)
        t = {WORD: torch.randn(vocab, hidden, generator=gen),
             "embeddings.position_ids": torch.arange(16).reshape(1, 16),
             "embeddings.LayerNorm.weight": torch.ones(hidden),
             "encoder.layer.0.attention.self.query.weight": torch.randn(hidden, hidden, generator=gen),
             "encoder.layer.0.intermediate.dense.weight": torch.randn(4 * hidden, hidden, generator=gen)}
        if heads_out is not None:
            t["classifier.weight"] = torch.randn(heads_out[i], hidden, generator=gen)
            t["classifier.bias"] = torch.zeros(heads_out[i])
        save_file(t, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": hidden}))
    return folder


def _both(src, tmp_path, *args, py_kwargs=None):
    """(Python report, C++ report, C++ stderr) for the same zoo and options."""
    out = tmp_path / "cpp"
    run = subprocess.run([tool(), str(src), "--out", str(out), *map(str, args)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    py = unisub.analyze(src, plots=False, progress=False, **(py_kwargs or {})).report
    return py, json.loads((out / "report.json").read_text()), run.stderr


def test_bert_like_folder_skips_the_embedding_gram_beyond_the_budget(tmp_path, gen):
    """The word embedding's "out" Gram (3000² float64 = 68.7 MiB here, 7.5 GB for real BERT) is
    beyond a 1 MiB budget: that mode is skipped with its reason, its "in" mode runs; both front ends
    plan and skip the same, print the plan, and raising the budget brings the mode back."""
    src = _bert_like(tmp_path / "bert", 4, gen)
    budget = 1 << 20
    py, cpp, stderr = _both(src, tmp_path, "--max-gram-bytes", budget, py_kwargs={"max_gram_bytes": budget})
    reason = py["skipped"][WORD + " [out]"]
    assert "3000 x 3000 float64 = 68.7 MiB, above the budget 1.0 MiB" in reason and "--max-gram-bytes" in reason
    assert py["skipped"]["embeddings.position_ids"] == "dtype I64"
    assert py["skipped"]["embeddings.LayerNorm.weight"].startswith("1-D tensor")
    assert py["skipped"] == cpp["skipped"]
    assert list(py["slots"]) == list(cpp["slots"]) == [WORD, "encoder.layer.0.attention.self.query.weight",
                                                       "encoder.layer.0.intermediate.dense.weight"]
    assert list(py["slots"][WORD]["modes"]) == list(cpp["slots"][WORD]["modes"]) == ["in"]
    assert py["plan"] == cpp["plan"]
    assert py["plan"]["split_half"] is None and py["plan"]["max_gram_bytes"] == budget
    assert "plan: 4 models, 3 slots (5 slot-modes)" in stderr and "skipped " + WORD + " [out]" in stderr
    # the default budget (2 GiB) takes the embedding's out Gram
    p, text = plan([(f"m{i}", {WORD: ("F32", (3000, 12))}, str) for i in range(4)], None, False, ["out", "in"])
    assert list(p["slots"][WORD]["modes"]) == ["out", "in"] and p["skipped"] == {}


def test_real_bert_embedding_is_over_the_default_budget():
    """The issue's case at full size, planned only (nothing is read): 30522 × 384 → 7.5 GB out Gram."""
    p, text = plan([(f"m{i}", {WORD: ("F32", (30522, 384)), "q": ("F32", (384, 384))}, str) for i in range(8)],
                   None, False, ["out", "in"])
    assert "30522 x 30522 float64 = 6.9 GiB, above the budget 2.0 GiB" in p["skipped"][WORD + " [out]"]
    assert list(p["slots"][WORD]["modes"]) == ["in"]
    c = p["slots"]["q"]["modes"]["out"]
    assert c["gram_bytes"] == 8 * 384**2 and c["multiply_adds"] == 8 * 384**3 + 3 * 384**3
    assert p["peak_bytes"] == max(s["peak_bytes"] for s in p["slots"].values())
    assert p["multiply_adds"] == sum(s["multiply_adds"] for s in p["slots"].values())


def test_seq_cls_zoo_skips_the_task_heads_not_fatal(tmp_path, gen):
    """Each task's classifier head has its own number of labels: skipped with its reason by both
    front ends (identical lists); named explicitly, it is an error naming the file (exit status 2)."""
    src = _bert_like(tmp_path / "cls", 5, gen, vocab=50, heads_out=[2, 4, 2, 3, 2])
    py, cpp, _ = _both(src, tmp_path)
    why = py["skipped"]["classifier.weight"]
    assert "shape [4, 12] differs from [2, 12]" in why and "model1" in why
    assert py["skipped"] == cpp["skipped"] and list(py["slots"]) == list(cpp["slots"])
    assert "classifier.weight" not in py["slots"] and WORD in py["slots"]
    with pytest.raises(CheckpointError, match=r"model1/model\.safetensors: slot 'classifier\.weight': shape \[4, 12\] "
                                              r"differs from \[2, 12\]"):
        unisub.analyze(src, slots=["classifier.weight"], plots=False, progress=False)
    run = subprocess.run([tool(), str(src), "--out", str(tmp_path / "named"), "--slots", "classifier.weight"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "model1/model.safetensors: slot 'classifier.weight': shape [4, 12]" in run.stderr
    assert not (tmp_path / "named" / "report.json").exists()


def test_fewer_than_two_models_is_an_error_and_few_models_say_so(tmp_path, gen):
    one = _bert_like(tmp_path / "one", 1, gen, vocab=20)
    with pytest.raises(CheckpointError, match="need at least 2 models to analyse"):
        unisub.analyze(one, plots=False, progress=False)
    run = subprocess.run([tool(), str(one), "--out", str(tmp_path / "o1")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "need at least 2 models to analyse" in run.stderr, run.stderr
    three = _bert_like(tmp_path / "three", 3, gen, vocab=20)
    py, cpp, stderr = _both(three, tmp_path)
    note = py["plan"]["split_half"]
    assert note and "3 models" in note and "no split-half stability" in note and note == cpp["plan"]["split_half"]
    assert note in stderr
    assert all(mr["split_half"] is None for rep in py["slots"].values() for mr in rep["modes"].values())


def test_patterns_match_as_python_does(gen):
    """Globs as fnmatch.fnmatchcase (classes, '!', ranges, reversed ranges, unclosed '[', backslashes
    literal) and `re:` as re.search: the plan selects what Python's own rules select."""
    rnd = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    names = {"".join(rnd.choice("ab.-_![]^\\&~|0z") for _ in range(rnd.randint(0, 6))) for _ in range(300)}
    names |= {"layers.0.attn.q.weight", "layers.10.mlp.fc1.weight", "Layers.1.attn.q.weight", "x[1].w"}
    slots = {n: ("F32", (2, 2)) for n in names}
    pats = ["".join(rnd.choice("ab.-_![]^*?\\&~|0z") for _ in range(rnd.randint(1, 7))) for _ in range(600)]
    pats += ["*attn*", "layers.?.*", "[!L]*", "[a-z]*", "[z-a]*", "x[[]1]*", "*[]]*", "re:layers\\.\\d+\\.mlp",
             "re:^L", "re:q\\.weight$", "re:(?i)layers\\.1\\b", "?[...]", "*[.:=]*", "[[]*"]
    compared = 0
    for p in pats:
        if p.startswith("re:"):
            want = sorted(n for n in names if re.search(p[3:], n))
        else:
            want = sorted(n for n in names if fnmatch.fnmatchcase(n, p))
        if not want:
            with pytest.raises(CheckpointError, match="no tensor matches --slots"):
                select(slots, [p], False, "f")
            continue
        assert select(slots, [p], False, "f")[0] == want, p
        compared += 1
    assert compared > 50


def test_plan_options_are_checked():
    tables = [(f"m{i}", {"w": ("F32", (4, 4))}, str) for i in range(2)]
    with pytest.raises(ValueError, match="max_gram_bytes must be >= 1"):
        plan(tables, None, False, ["out"], max_gram_bytes=0)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        plan(tables, ["re:("], False, ["out"])
    with pytest.raises(ValueError, match="modes are 'out', 'in' or 'delta'"):
        plan(tables, None, False, ["rows"])


def test_python_front_end_prints_the_plan_before_reading(tmp_path, gen, capsys, monkeypatch):
    """The plan is printed before any tensor is read (a read would fail here)."""
    src = _bert_like(tmp_path / "p", 4, gen, vocab=60)  # out Grams: 60² (embedding), 48² (FFN), 12²
    from unisub.io import checkpoints

    def refuse(*a, **k):
        print("READ", file=__import__("sys").stderr)
        raise RuntimeError("stop after the plan")

    monkeypatch.setattr(checkpoints.SafetensorsCheckpoint, "get", refuse)
    with pytest.raises(RuntimeError, match="stop after the plan"):
        unisub.analyze(src, max_gram_bytes=8 * 60 * 60 - 1, plots=False, progress=True)
    err = capsys.readouterr().err
    assert err.index("plan: 4 models, 3 slots (5 slot-modes)") < err.index("READ")
    assert "skipped " + WORD + " [out]: the 'out' Gram is 60 x 60 float64 = 28.1 KiB, above the budget 28.1 KiB" in err


def test_delta_modules_are_in_the_plan(tmp_path, gen):
    """--modes delta alone used to print an empty plan (no cost, no memory): the modules' K and
    factors are counted now, the same in both front ends."""
    from test_analyze_cpp import _adapters

    ads = _adapters(tmp_path, gen)
    py, cpp, err = _both(ads, tmp_path, "--modes", "delta", py_kwargs={"modes": ["delta"]})
    plan = py["plan"]
    assert plan == cpp["plan"]
    M = py["models"]
    # at least the Gram's multiply-adds, (Σr)²(m + n)/2 ≥ M², and M × M float64 K per module
    assert plan["multiply_adds"] >= M * M and plan["peak_bytes"] >= 8 * M * M and plan["seconds"] > 0
    assert re.search(r"plan: \d+ models, \d+ delta modules; peak memory ~", err), err
