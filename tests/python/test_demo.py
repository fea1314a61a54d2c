"""`unisub demo --zoo digits --quick` end to end: every section runs, the numbers obey what the library
guarantees, the report is written and the zoo cache is reused."""
import json

import pytest

pytest.importorskip("sklearn")

from unisub.demo import QUICK, run_demo  # noqa: E402
from unisub.demo.zoo import build_zoo  # noqa: E402


def test_quick_demo(tmp_path):
    lines = []
    results = run_demo(out=tmp_path / "out", quick=True, cache=tmp_path / "cache", log=lines.append, zoo="digits")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdicts"] == results["verdicts"] and len(results["verdicts"]) >= 7
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Verdicts" in md and "reconstruction.png" in md
    assert (tmp_path / "out" / "reconstruction.png").stat().st_size > 0
    # both zoos analysed for all three layers and both modes
    assert len(results["spectra"]) == 12
    assert all(0 < r["ev_at_r"] <= 1 + 1e-9 and 0 <= r["null_ev_at_r"] <= 1 + 1e-9 for r in results["spectra"])
    # the centred subspace merge is the mean merge (same weights up to rounding: same predictions)
    merging = results["merging"]
    assert merging["subspace, centred (= mean)"]["per_task"] == merging["mean"]["per_task"]
    proj = {r["method"]: r for r in results["projection"]}
    assert proj["projected"]["update_energy"] >= 1 - 1e-5 and proj["complement"]["update_energy"] <= 1e-5
    assert all(r["ratio"] > 1 and 0 <= r["accuracy"] <= 1 for r in results["compression"])
    training = {r["method"]: r for r in results["training"]}
    assert training["coefficients (universal)"]["trainable"] == training["coefficients (random)"]["trainable"]
    assert training["LoRA r=4 in subspace"]["trainable"] < training["LoRA r=4"]["trainable"]
    # a second build reads the cache instead of training
    again = []
    zoo = build_zoo(QUICK, tmp_path / "cache", again.append)
    assert again == [f"zoo: read from the cache {zoo.root}"] and zoo.seconds == 0.0
