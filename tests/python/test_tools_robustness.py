"""Robustness of the demo, the LoRA tools, the nn layers, the projector and the tracker: outputs
never replace what they did not write, bad arguments are refused before any work with one line
naming them, and bfloat16 layers stay bfloat16. Synthetic PEFT adapters (no model needed), tiny
layers."""
import json
import os
import re

import pytest
import torch

import unisub
import unisub.nn as unn
from unisub.cli import main
from unisub.io import CheckpointError, WriteError, save_file
from unisub.lora import LoraZoo, MultiTaskLoRA
from unisub.lora import peft_out
from unisub.tracker import ConvergenceTracker

MODS = {"layer.0.q": (6, 5), "layer.0.v": (6, 5), "layer.1.q": (7, 6)}  # module: ΔW (m, n)


def make_adapter(folder, r=2, alpha=4, seed=0):
    """A PEFT LoRA adapter folder with random factors for MODS."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for mod, (m, n) in MODS.items():
        tensors[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(r, n, generator=g)
        tensors[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(m, r, generator=g)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": False, "rank_pattern": {},
           "alpha_pattern": {}, "target_modules": ["q", "v"], "lora_dropout": 0.0, "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def adapters(tmp_path):
    return [make_adapter(tmp_path / "ads" / name, seed=i + 1) for i, name in enumerate("abcd")]


@pytest.fixture
def zoo_file(tmp_path, adapters):
    path = tmp_path / "zoo.safetensors"
    assert main(["lora", "compress", *map(str, adapters), "--out", str(path), "--lossless", "--quiet"]) == 0
    return path


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ 1. demo --out / --cache
@pytest.mark.parametrize("zoo", ["minilm", "digits"])
def test_demo_leaves_a_foreign_out_folder_alone(tmp_path, zoo):
    from unisub.demo import DemoError, run_demo

    mine = tmp_path / "myproject"
    for sub in ("analysis", "merged", "exported"):
        (mine / sub).mkdir(parents=True)
        (mine / sub / "notes.txt").write_text("mine")
    before = files(mine)
    with pytest.raises(DemoError, match="--out .*not create"):
        run_demo(out=mine, zoo=zoo, cache=tmp_path / "cache", log=lambda *a: None)
    assert files(mine) == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DemoError, match="--out .*is a file"):
        run_demo(out=tmp_path / "afile", zoo=zoo, cache=tmp_path / "cache", log=lambda *a: None)
    with pytest.raises(DemoError, match="--out .*cannot be created"):
        run_demo(out=tmp_path / "afile" / "sub", zoo=zoo, cache=tmp_path / "cache", log=lambda *a: None)
    with pytest.raises(DemoError, match="--cache .*is a file"):
        run_demo(out=tmp_path / "new", zoo=zoo, cache=tmp_path / "afile", log=lambda *a: None)
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "new").exists()


def test_demo_clears_only_its_own_subfolders_of_its_own_folder(tmp_path):
    from unisub.demo.outdir import MARKER, prepare_out

    out = prepare_out(tmp_path / "out", None, ("analysis", "merged"))  # a new folder: created and marked
    assert (out / MARKER).is_file()
    (out / "analysis" / "x").mkdir(parents=True)
    (out / "notes.txt").write_text("kept")
    prepare_out(out, tmp_path / "cache", ("analysis", "merged"))  # a rerun: the previous run's analysis goes
    assert not (out / "analysis").exists() and (out / "notes.txt").read_text() == "kept"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_out(empty, None, ("analysis",)) / MARKER).is_file()
    old = tmp_path / "old"  # a report folder of a demo older than the marker: still the demo's
    (old / "analysis").mkdir(parents=True)
    (old / "report.json").write_text(json.dumps({"zoo": {}, "verdicts": [], "seconds": 1.0}))
    prepare_out(old, None, ("analysis",))
    assert not (old / "analysis").exists() and (old / MARKER).is_file()


# ------------------------------------------------------------------ 2. merge / export over adapters
def test_merge_refuses_an_input_as_output(tmp_path, adapters, capsys):
    a, b = adapters[:2]
    before = files(a)
    assert main(["lora", "merge", str(a), str(b), "--out", str(a)]) == 2
    os.symlink(a, tmp_path / "link")
    assert main(["lora", "merge", str(a), str(b), "--out", str(tmp_path / "link")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(e.startswith("unisub lora merge: error: ") and "is the input adapter" in e for e in err)
    assert files(a) == before


def test_export_over_an_adapter_replaces_it_whole(tmp_path, zoo_file):
    old = make_adapter(tmp_path / "mine", r=3, alpha=16, seed=9)
    (old / "adapter_model.bin").write_bytes(b"stale")
    assert main(["lora", "export", str(zoo_file), "0", "--out", str(old)]) == 0
    assert sorted(p.name for p in old.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((old / "adapter_config.json").read_text())["lora_alpha"] != 16


# ------------------------------------------------------------------ 3. weights / config pair
def test_an_interrupted_adapter_write_leaves_no_config_to_pair_with_new_weights(tmp_path, adapters, monkeypatch):
    out = make_adapter(tmp_path / "out", r=4, alpha=64, seed=7)
    old_weights = (out / "adapter_model.safetensors").read_bytes()

    def interrupted(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(peft_out, "write_json", interrupted)
    assert main(["lora", "merge", *map(str, adapters[:2]), "--out", str(out)]) == 130
    assert not (out / "adapter_config.json").exists()  # PEFT refuses the folder instead of mis-scaling
    assert (out / "adapter_model.safetensors").read_bytes() != old_weights
    monkeypatch.undo()
    assert main(["lora", "merge", *map(str, adapters[:2]), "--out", str(out)]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # Σ r_i of the two


# ------------------------------------------------------------------ 4. ranks
@pytest.mark.parametrize("argv", [["export", "ZOO", "a", "--rank", "0"], ["export", "ZOO", "a", "--rank=-3"],
                                  ["merge", "A", "B", "--out-rank", "0"], ["merge", "A", "B", "--out-rank=-2"]])
def test_non_positive_ranks_are_refused(tmp_path, zoo_file, adapters, argv, capsys):
    subst = {"ZOO": str(zoo_file), "A": str(adapters[0]), "B": str(adapters[1])}
    assert main(["lora", *[subst.get(x, x) for x in argv], "--out", str(tmp_path / "o")]) == 2
    assert "rank must be a positive integer, got " in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ 5. one task per batch row
class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.ModuleList([torch.nn.Module(), torch.nn.Module()])
        self.layer[0].q, self.layer[0].v = torch.nn.Linear(5, 6), torch.nn.Linear(5, 6)
        self.layer[1].q = torch.nn.Linear(6, 7)

    def forward(self, x):
        a = self.layer[0].q(x)
        return torch.cat([a, self.layer[0].v(x), self.layer[1].q(a)], -1)


def test_multitask_rows_must_match_the_batch(zoo_file):
    served = MultiTaskLoRA(_Model().eval(), LoraZoo.load(zoo_file))
    x = torch.randn(4, 5)
    with torch.no_grad():
        with pytest.raises(ValueError, match="3 tasks .* not a multiple"):
            served.set_task(torch.tensor([0, 1, 2]))(x)
        with pytest.raises(ValueError, match="3 tasks"):
            served.set_task(["a", "b", "a"])(x)
        # a flattened [B·S, H] input: t runs of S consecutive rows, as before
        runs = served.set_task(["a", "b"])(x)
        assert torch.allclose(runs, served.set_task(["a", "a", "b", "b"])(x))
        # one task however given serves the whole batch
        assert torch.allclose(served.set_task(["a"])(x), served.set_task("a")(x))
        assert torch.allclose(served.set_task(torch.tensor(0))(x), served.set_task(0)(x))
        rows = served.set_task(["a", "a", "b", "b"])(x)
        assert torch.allclose(rows[:2], served.set_task("a")(x)[:2])  # one task: the whole batch
        assert torch.allclose(rows[2:], served.set_task("b")(x)[2:])


# ------------------------------------------------------------------ 6. bfloat16 layers
def test_bfloat16_layers_stay_bfloat16():
    torch.manual_seed(0)
    U = torch.linalg.qr(torch.randn(6, 2))[0]
    V = torch.linalg.qr(torch.randn(5, 3))[0]
    lin = torch.nn.Linear(5, 6).to(torch.bfloat16)
    x = torch.randn(3, 5, dtype=torch.bfloat16)
    merged = unn.SubspaceLinear.from_linear(lin, (U, V)).merge()
    assert merged.weight.dtype == torch.bfloat16 and merged(x).dtype == torch.bfloat16
    assert torch.allclose(merged.weight.float(), lin.weight.float(), atol=1e-2)

    model = torch.nn.Sequential(torch.nn.Linear(5, 6)).to(torch.bfloat16)
    ref = model(x)
    coeffs = unn.train_coefficients(model, {"0.weight": (U, None)})
    assert coeffs[0].dtype == torch.bfloat16
    y = model(x)
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), ref.float(), atol=5e-2)
    y.float().sum().backward()
    assert coeffs[0].grad is not None
    unn.merge(model)
    assert model[0].weight.dtype == torch.bfloat16 and set(dict(model.named_parameters())) == {"0.weight", "0.bias"}


# ------------------------------------------------------------------ 7. compress output paths
def test_compress_checks_its_outputs_first(tmp_path, adapters, capsys, monkeypatch):
    (tmp_path / "adir").mkdir()
    ads = list(map(str, adapters))
    for out, extra, what in [(tmp_path / "adir", [], "--out .* is a folder"),
                             (tmp_path / "missing" / "z.safetensors", [], "does not exist"),
                             (tmp_path / "z.safetensors", ["--json", str(tmp_path / "adir")], "--json .* is a folder")]:
        assert main(["lora", "compress", *ads, "--out", str(out), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("unisub lora compress: error: ") and "\n" not in err
        assert re.search(what, err)
    assert not (tmp_path / "z.safetensors").exists()

    def full(self, path):
        raise WriteError(f"{path}: No space left on device")

    monkeypatch.setattr(LoraZoo, "save", full)
    assert main(["lora", "compress", *ads, "--out", str(tmp_path / "z.safetensors"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip().endswith("No space left on device")


# ------------------------------------------------------------------ 8. a damaged zoo file
@pytest.mark.parametrize("damage,message", [
    (lambda z: setattr(z.modules["layer.0.q"], "U", torch.randn(3, 2)), "U has shape"),
    (lambda z: z.modules["layer.0.q"].coefficients.fill_(float("nan")), "NaN"),
    (lambda z: z.modules.clear(), "no LoRA module"),
    (lambda z: setattr(z, "names", ["a", "a", "c", "d"]), "repeat"),
    (lambda z: (setattr(z, "names", z.names[:2]), z.source_dtypes.clear(), z.source_nbytes.clear()),
     "coefficients has shape"),
])
def test_a_damaged_zoo_is_refused_on_load(tmp_path, zoo_file, damage, message, capsys):
    zoo = LoraZoo.load(zoo_file)
    damage(zoo)
    bad = tmp_path / "bad.safetensors"
    zoo.save(bad)
    with pytest.raises(CheckpointError, match=message):
        LoraZoo.load(bad)
    assert main(["lora", "export", str(bad), "1", "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.startswith(f"unisub lora export: error: {bad}: ")


# ------------------------------------------------------------------ 9. GradientProjector
def test_projector_covers_parameters_unfrozen_later():
    torch.manual_seed(0)
    U = torch.linalg.qr(torch.randn(6, 2))[0]
    lin = torch.nn.Linear(5, 6)
    lin.weight.requires_grad_(False)
    projector = unisub.GradientProjector(lin, {"weight": (U, None)})
    assert not lin.weight.requires_grad  # left as the user set it
    lin.weight.requires_grad_(True)
    lin(torch.randn(3, 5)).sum().backward()
    G = lin.weight.grad
    assert float((G - U @ U.T @ G).norm()) <= 1e-5 * float(G.norm())
    assert "onto the subspaces" in repr(projector) and "the their" not in repr(projector)


def test_projector_refuses_sparse_gradients():
    U = torch.linalg.qr(torch.randn(10, 3))[0]
    with pytest.raises(ValueError, match="does not support sparse gradients"):
        unisub.GradientProjector(torch.nn.Embedding(10, 4, sparse=True), {"weight": (U, None)})
    emb = torch.nn.Embedding(10, 4)
    projector = unisub.GradientProjector(emb, {"weight": (U, None)})
    emb.weight.grad = torch.zeros(10, 4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        projector.project_now()


# ------------------------------------------------------------------ 10. ConvergenceTracker CSV
def test_tracker_csv_does_not_overwrite_other_files(tmp_path):
    U = torch.linalg.qr(torch.randn(6, 2))[0]
    model = torch.nn.Sequential(torch.nn.Linear(5, 6))
    data = tmp_path / "data.csv"
    data.write_text("precious,user,data\n1,2,3\n")
    with pytest.raises(ValueError, match="not this ConvergenceTracker's CSV"):
        ConvergenceTracker(model, {"0.weight": (U, None)}, csv=data)
    assert data.read_text() == "precious,user,data\n1,2,3\n"
    log = tmp_path / "log.csv"  # a user's training log whose first column is "step" too
    log.write_text("step,loss\n1,0.5\n")
    with pytest.raises(ValueError, match="not this ConvergenceTracker's CSV"):
        ConvergenceTracker(model, {"0.weight": (U, None)}, csv=log)
    assert log.read_text() == "step,loss\n1,0.5\n"
    with pytest.raises(ValueError, match="is a folder"):
        ConvergenceTracker(model, {"0.weight": (U, None)}, csv=tmp_path)
    own = tmp_path / "run.csv"
    ConvergenceTracker(model, {"0.weight": (U, None)}, csv=own).close()
    own.write_text(own.read_text() + "1,0.5,0.5,0.5,0.5\n")
    ConvergenceTracker(model, {"0.weight": (U, None)}, csv=own).close()  # a rerun replaces its own CSV
    assert len(own.read_text().splitlines()) == 1


def test_demo_out_that_cannot_be_used_is_one_line_exit_2(tmp_path):
    from unisub.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["demo", "--quick", "--out", str(tmp_path / "afile")]) == 2
    mine = tmp_path / "mine"
    (mine / "analysis").mkdir(parents=True)
    (mine / "analysis" / "notes.txt").write_text("keep")
    assert main(["demo", "--quick", "--out", str(mine)]) == 2
    assert (mine / "analysis" / "notes.txt").read_text() == "keep"  # nothing deleted


def test_projector_keeps_a_create_graph_gradient_in_its_graph():
    # project_ refuses a gradient that is part of a graph (backward(create_graph=True)); the
    # projector projects it out of place instead, so second-order methods still work
    from unisub import GradientProjector

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 6, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]
    projector = GradientProjector(model, {"weight": (U, None)})
    x = torch.randn(3, 5, dtype=torch.float64)
    model(x).pow(3).sum().backward(create_graph=True)
    g = model.weight.grad
    assert g.requires_grad
    torch.testing.assert_close(g, U @ (U.T @ g))
    projector.remove()


def test_a_failed_adapter_write_leaves_the_old_adapter_whole(tmp_path, monkeypatch):
    from unisub.lora import peft_out

    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(b"old")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    from unisub.lora.adapters import ModuleSpec

    spec = ModuleSpec("q.lora_A.weight", "q.lora_B.weight", (6, 5), (5,), (6,))
    monkeypatch.setattr(peft_out, "save_file", full_disk)
    with pytest.raises(OSError):
        peft_out.write_adapter(folder, {"q": (torch.randn(6, 2), torch.randn(2, 5))}, {"q": spec}, {"r": 4})
    assert (folder / "adapter_config.json").read_text() == '{"r": 4}'
    assert (folder / "adapter_model.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
