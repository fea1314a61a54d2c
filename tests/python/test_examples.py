"""The examples run, and what they print is what the library promises (small settings)."""
import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_in_subspace_example():
    pytest.importorskip("sklearn")
    rows = {r["method"]: r for r in load("finetune_in_subspace").main(["--zoo", "3", "--steps", "30", "--rank", "4"])}
    assert set(rows) == {"full", "projected", "complement", "coefficients", "SubspaceAdamW"}
    # the share of each run's update inside the subspace: 1 and 0 up to float32 weight rounding
    assert rows["projected"]["energy"] >= 1 - 1e-5 and rows["coefficients"]["energy"] >= 1 - 1e-5
    assert rows["complement"]["energy"] <= 1e-5
    assert rows["coefficients"]["trainable"] == 3 * 4 * 4  # three layers, 4 × 4 coefficients each
    assert rows["SubspaceAdamW"]["state"] < rows["full"]["state"]
    assert all(0 <= r["accuracy"] <= 1 and math.isfinite(r["ms"]) for r in rows.values())
