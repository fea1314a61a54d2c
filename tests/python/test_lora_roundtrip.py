"""compress -> export round trip with the real peft + transformers on a MiniLM LoRA zoo trained in
the test (mixed ranks 2-8, lora_alpha, rsLoRA, rank/alpha patterns, float16 / bfloat16 / float32).

References are float64: each adapter's ΔW = s·B·A from its stored factors and config (scaling by
hand here, checked against PEFT's own merged weights), and dense float64 reconstructions U C Vᵀ.
Bounds: reported errors equal the dense ones to 1e-9 (absolute, on relative errors); what PEFT
adds for an exported adapter equals the reconstruction to float32 rounding of the merged weight
(4 ε₃₂ (|W| + |ΔW|) per entry, plus k ε₃₂ |B||A| for the product)."""
import json
import math
import re

import pytest
import torch

import lora_zoo
from lora_zoo import single_thread  # noqa: F401  (autouse)
from unisub.lora import LoraZoo, compress, export

EPS32 = torch.finfo(torch.float32).eps


def reference_deltas(folder):
    """{module: ΔW} (float64) from the adapter's files, with PEFT's scaling rules written out here."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    sd = load_file(folder / "adapter_model.safetensors")

    def pattern(patterns, module, default):
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    out = {}
    for key, A in sd.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        B = sd[key.replace(".lora_A.", ".lora_B.")]
        r = pattern(cfg.get("rank_pattern") or {}, module, cfg["r"])
        alpha = pattern(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        assert B.shape[1] == r
        s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = s * B.double() @ A.double()
    return out


@pytest.fixture(scope="module")
def refs():
    lora_zoo.require()
    with lora_zoo.one_thread():
        return {name: reference_deltas(p) for name, p in zip(lora_zoo.ZOO, lora_zoo.zoo_paths())}


def rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def merge_bound(base_w, delta, k):
    return 4 * EPS32 * (base_w.double().abs() + delta.abs()).max() + k * EPS32 * delta.abs().max() * 4


def test_reference_scaling_is_peft_s(refs):
    """Our float64 references (and so unisub's reader) add what PEFT adds: merged − base weight."""
    name = "c_r2_patterns_bf16"  # rank_pattern and alpha_pattern, bfloat16 on disk
    mods = list(refs[name])
    got = lora_zoo.peft_deltas(lora_zoo.zoo_folder() / name, mods)
    base = lora_zoo.base_model()
    for mod in mods:
        bound = merge_bound(base.get_submodule(mod).weight, refs[name][mod], 8)
        assert (got[mod] - refs[name][mod]).abs().max() <= bound, mod


def test_lossless_zoo_reconstructs_every_adapter(refs):
    zoo = compress(lora_zoo.zoo_paths(), dtype=torch.float64)
    assert zoo.names == lora_zoo.ZOO
    for i, name in enumerate(zoo.names):
        for mod, mb in zoo.modules.items():
            D = refs[name][mod]
            assert rel(mb.reconstruct(i), D) <= 1e-6, (name, mod)
        assert zoo.errors()[i]["relative_error"] <= 1e-6


@pytest.mark.parametrize("kw", [{"energy": 0.8}, {"rank": 3}])
def test_reported_errors_are_the_true_ones(refs, kw):
    zoo = compress(lora_zoo.zoo_paths(), dtype=torch.float64, **kw)
    for mod, mb in zoo.modules.items():
        if "rank" in kw:
            assert mb.ranks == (3, 3)
        assert mb.U.shape[0] == mb.spec.shape[0] and mb.V.shape[0] == mb.spec.shape[1]
        eye = torch.eye(mb.U.shape[1], dtype=torch.float64)
        assert torch.allclose(mb.U.T @ mb.U, eye, atol=1e-12)
    errors = zoo.errors()
    for i, name in enumerate(zoo.names):
        res = sum(float(torch.linalg.norm(refs[name][mod] - mb.reconstruct(i)) ** 2) for mod, mb in zoo.modules.items())
        tot = sum(float(torch.linalg.norm(refs[name][mod]) ** 2) for mod in zoo.modules)
        assert abs(errors[i]["relative_error"] - math.sqrt(res / tot)) <= 1e-9
        assert 0 < errors[i]["relative_error"] < 1
    M = zoo.count
    mean_dense = {mod: sum(mb.reconstruct(i) for i in range(M)) / M for mod, mb in zoo.modules.items()}
    share = M * sum(float(mean_dense[mod].pow(2).sum()) for mod in zoo.modules) / sum(
        float(mb.reconstruct(i).pow(2).sum()) for mb in zoo.modules.values() for i in range(M))
    assert zoo.mean_share() == pytest.approx(share, rel=1e-9)
    B, A = zoo.mean_factors(mod)
    assert torch.allclose(B @ A, mean_dense[mod], atol=1e-15)
    st = zoo.storage()
    assert st["original_bytes"] == sum(t.numel() * t.element_size() for p in lora_zoo.zoo_paths()
                                       for t in _load(p).values())
    assert st["compressed_bytes"] == sum(8 * (mb.U.numel() + mb.V.numel() + mb.coefficients.numel())
                                         for mb in zoo.modules.values())


def _load(p):
    from safetensors.torch import load_file

    return load_file(p / "adapter_model.safetensors")


def test_export_roundtrip_through_peft(refs, tmp_path):
    """compress (float32 file) -> save -> load -> export -> PeftModel.from_pretrained: merged weights
    equal the reconstruction to float32 rounding and the original within the reported error."""
    zoo = compress(lora_zoo.zoo_paths(), energy=0.8)
    zoo.save(tmp_path / "zoo.safetensors")
    zoo = LoraZoo.load(tmp_path / "zoo.safetensors")
    base = lora_zoo.base_model()
    for i in (0, 2):  # float32 r=4; bfloat16 with patterns
        name = zoo.names[i]
        rep = export(zoo, name, tmp_path / name, dtype="float32")
        cfg = json.loads((tmp_path / name / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and not cfg["use_rslora"] and cfg["r"] == cfg["lora_alpha"]
        got = lora_zoo.peft_deltas(tmp_path / name, list(zoo.modules))
        res = tot = 0.0
        for mod, mb in zoo.modules.items():
            W_hat = mb.reconstruct(i)
            k = min(mb.ranks)
            assert (got[mod] - W_hat).abs().max() <= merge_bound(base.get_submodule(mod).weight, W_hat, k), mod
            res += float(torch.linalg.norm(got[mod].detach() - refs[name][mod]) ** 2)
            tot += float(torch.linalg.norm(refs[name][mod]) ** 2)
        assert math.sqrt(res / tot) <= rep["relative_error"] + 1e-4
        assert rep["relative_error"] == pytest.approx(zoo.errors()[i]["relative_error"])


def test_export_in_half_precision_and_truncated(tmp_path):
    zoo = compress(lora_zoo.zoo_paths(), energy=0.8)
    rep = export(zoo, "b_r8_rslora_f16", tmp_path / "b")  # default: the adapter's own dtype
    assert rep["dtype"] == "float16"
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert {t.dtype for t in sd.values()} == {torch.float16}
    mod = next(iter(zoo.modules))
    mb = zoo.modules[mod]
    key = "base_model.model." + mb.spec.b_key
    B, A = sd[key].double(), sd[key.replace("lora_B", "lora_A")].double()
    W_hat = mb.reconstruct(1)
    assert rel(B @ A, W_hat) <= 4e-3  # float16 factors: ~2^-11 relative per entry
    rep = export(zoo, 1, tmp_path / "b1", dtype="float32", rank=1)
    sd = load_file(tmp_path / "b1" / "adapter_model.safetensors")
    assert sd[key].shape[1] == 1 and rep["truncation_error"] > 0


def test_zoos_that_cannot_share_a_subspace_are_refused(tmp_path):
    """Different modules, DoRA, non-finite factors: errors that name the adapter, not garbage."""
    import shutil

    from unisub.io import CheckpointError, load_file, save_file

    src = lora_zoo.zoo_folder() / "a_r4"
    fewer = tmp_path / "fewer"
    shutil.copytree(src, fewer)
    sd = load_file(fewer / "adapter_model.safetensors")
    save_file({k: v for k, v in sd.items() if ".layer.0.attention.self.query." not in k}, fewer / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="LoRA modules differ"):
        compress([src, fewer])
    dora = tmp_path / "dora"
    shutil.copytree(src, dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA"):
        compress([src, dora])
    bad = tmp_path / "nan"
    shutil.copytree(src, bad)
    key = next(k for k in sd if k.endswith("lora_B.weight"))
    save_file({**sd, key: torch.full_like(sd[key], float("nan"))}, bad / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        compress([src, bad])
    with pytest.raises(ValueError, match="given twice"):
        compress([src, src])
