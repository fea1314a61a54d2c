"""PEFT adapters (scaling, rsLoRA, rank/alpha patterns), torch state dicts, slot selection and the
discovery of checkpoints in folders."""
import json
import math

import pytest
import torch

from unisub.io import (CheckpointError, PeftAdapter, TorchCheckpoint, discover, matrix_shape, save_file,
                       select)


def _adapter(folder, config, modules, gen, r_of=lambda m: None):
    folder.mkdir(parents=True)
    tensors = {}
    for mod in modules:
        r = r_of(mod) or config["r"]
        tensors[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(r, 6, generator=gen)
        tensors[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(5, r, generator=gen)
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return tensors


MODS = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"]


def test_peft_scaling_plain_and_rslora(tmp_path, gen):
    for rs in (False, True):
        cfg = {"r": 4, "lora_alpha": 16, "use_rslora": rs}
        raw = _adapter(tmp_path / f"a{rs}", cfg, MODS, gen)
        ad = PeftAdapter(tmp_path / f"a{rs}")
        s = 16 / math.sqrt(4) if rs else 16 / 4
        key = "model.layers.0.self_attn.q_proj.lora_B.weight"
        assert key in ad.slots, "the base_model.model. prefix is dropped"
        # the product is formed in float64 and rounded once (it used to be float32 * float32(s))
        torch.testing.assert_close(ad.get(key), (s * raw["base_model.model." + key].double()).float(), rtol=0, atol=0)
        a_key = key.replace("lora_B", "lora_A")
        assert torch.equal(ad.get(a_key), raw["base_model.model." + a_key]), "lora_A is never scaled"
        unscaled = PeftAdapter(tmp_path / f"a{rs}", scale=False)
        assert torch.equal(unscaled.get(key), raw["base_model.model." + key])


def test_peft_rank_and_alpha_patterns_first_match_on_dot_boundary(tmp_path, gen):
    if not torch.classes.unisub.SafetensorsFile.built_with_pcre2():
        pytest.skip("libunisub was built without PCRE2")
    # "q_proj" must not hit "qq_proj"-like names; the first matching key in file order wins.
    cfg = {"r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 2, "layers.1.mlp.down_proj": 6},
           "alpha_pattern": {"self_attn.v_proj": 32, "v_proj": 1, "down_proj": 3}}
    ranks = {MODS[1]: 2, MODS[2]: 6}
    raw = _adapter(tmp_path / "a", cfg, MODS, gen, r_of=ranks.get)
    ad = PeftAdapter(tmp_path / "a")
    expect = {MODS[0]: 8 / 4, MODS[1]: 32 / 2, MODS[2]: 3 / 6}
    for mod, s in expect.items():
        key = f"{mod}.lora_B.weight"
        torch.testing.assert_close(ad.get(key), (s * raw["base_model.model." + key].double()).float(), rtol=0, atol=0)


def test_peft_rank_mismatch_is_an_error(tmp_path, gen):
    _adapter(tmp_path / "a", {"r": 4, "lora_alpha": 8}, MODS[:1], gen, r_of=lambda m: 3)
    # both factors are checked now (lora_A first: [r, in]); only lora_B was
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors: slot 'model.layers.0.self_attn.q_proj.lora_A.weight': "
                                              r"adapter_config.json gives rank 4 for module 'model.layers.0.self_attn.q_proj' "
                                              r"but lora_A has shape \[3, 6\]"):
        PeftAdapter(tmp_path / "a")


def _embedding_adapter(folder, r, vocab, dim, alpha, gen):
    """PEFT's layout for LoRA on an nn.Embedding: lora_embedding_A [r, num_embeddings] and
    lora_embedding_B [embedding_dim, r] (no .weight suffix), ΔW = s·B·A of shape [dim, vocab]."""
    folder.mkdir(parents=True)
    A, B = torch.randn(r, vocab, generator=gen), torch.randn(dim, r, generator=gen)
    save_file({"base_model.model.model.embed_tokens.lora_embedding_A": A,
               "base_model.model.model.embed_tokens.lora_embedding_B": B}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha}))
    return A, B


def test_peft_embedding_lora_rank_and_scaling(tmp_path, gen):
    # The rank is lora_embedding_B's second dimension, as for lora_B (it used to be read from the
    # first, so every real embedding adapter was rejected as contradicting its config).
    A, B = _embedding_adapter(tmp_path / "a", 4, 50, 12, 8, gen)
    ad = PeftAdapter(tmp_path / "a")
    key = "model.embed_tokens.lora_embedding_B"
    torch.testing.assert_close(ad.get(key), ((8 / 4) * B.double()).float(), rtol=0, atol=0)
    assert ad.lora_pairs() == {"model.embed_tokens": ("model.embed_tokens.lora_embedding_A", key)}


@pytest.mark.parametrize("config,pattern", [
    ('[4, 8]', r"adapter config must be a JSON object, got array"),
    ('{"r": 4, "lora_alpha": NaN}', r"cannot read adapter config: invalid JSON: NaN and Infinity are not JSON numbers at byte 23"),
    ('{"r": 4, "lora_alpha": Infinity}', r"cannot read adapter config: invalid JSON: NaN and Infinity are not JSON"),
    ('{"r": 4, "lora_alpha": 1e400}', r"lora_alpha must be a finite number, got 1e400"),
    ('{"r": 4, "lora_alpha": "16"}', r'lora_alpha must be a finite number, got "16"'),
    ('{"r": "4", "lora_alpha": 16}', r'r must be a positive integer, got "4"'),
    ('{"r": 4.0, "lora_alpha": 16}', r"r must be a positive integer, got 4.0"),
    ('{"r": null, "lora_alpha": 16}', r"r must be a positive integer, got null"),
    ('{"r": 4, "lora_alpha": 16, "alpha_pattern": {"q_proj": NaN}}', r"cannot read adapter config: invalid JSON: NaN and Infinity"),
    ('{"r": 4, "lora_alpha": 16, "alpha_pattern": {"q_proj": "x"}}', r"alpha_pattern\['q_proj'\] must be a finite number, got \"x\""),
    ('{"r": 4, "lora_alpha": 16, "rank_pattern": [4]}', r"rank_pattern must map module patterns to values, got array"),
    ('{"r": 4, "lora_alpha": 16, "rank_pattern": {"(": 4}}', r"rank_pattern pattern '\(' is not a valid regular expression \(missing closing parenthesis"),
    ('{"r": 4, "r": 8}', r'cannot read adapter config: invalid JSON: duplicate key "r" at byte 9'),
])
def test_peft_broken_config_is_a_clear_error(tmp_path, gen, config, pattern):
    # These used to give AttributeError / TypeError / re.error, or (NaN, inf alpha) a silent
    # scaling of NaN or inf on every lora_B. The config is strict JSON now (NaN / Infinity are no
    # JSON: refused when parsing, as they were by the C++ tool), and values are quoted as JSON.
    if "rank_pattern\": {" in config and not torch.classes.unisub.SafetensorsFile.built_with_pcre2():
        pytest.skip("libunisub was built without PCRE2")
    _adapter(tmp_path / "a", {"r": 4, "lora_alpha": 16}, MODS[:1], gen)
    (tmp_path / "a" / "adapter_config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"adapter_config\.json: " + pattern):
        PeftAdapter(tmp_path / "a")


def test_torch_state_dicts_pt_bin_and_nested(tmp_path, gen):
    sd = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    torch.save(sd, tmp_path / "m.pt")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "n.bin")
    for name in ("m.pt", "n.bin"):
        ck = TorchCheckpoint(tmp_path / name)
        assert ck.slots == {"w": ("F32", (4, 3)), "b": ("F32", (4,))}
        assert torch.equal(ck.get("w"), sd["w"])
    # non-string keys used to fail later, in slot selection, with "'<' not supported between 'str' and 'int'"
    torch.save({"w": sd["w"], 3: sd["w"]}, tmp_path / "intkey.pt")
    with pytest.raises(CheckpointError, match=r"intkey\.pt: tensor names must be strings, got key 3 \(int\)"):
        TorchCheckpoint(tmp_path / "intkey.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match=r"bad\.pt: cannot load"):
        TorchCheckpoint(tmp_path / "bad.pt")


def test_slot_selection_globs_regex_conv_and_1d():
    slots = {"enc.0.conv.weight": ("F32", (8, 3, 3, 3)), "enc.0.conv.bias": ("F32", (8,)),
             "enc.1.fc.weight": ("BF16", (4, 8)), "steps": ("I64", ()), "pos_ids": ("I64", (1, 5))}
    chosen, skipped = select(slots, None, False, "f")
    assert chosen == ["enc.0.conv.weight", "enc.1.fc.weight"]
    assert set(skipped) == {"enc.0.conv.bias", "steps", "pos_ids"}
    assert select(slots, None, True, "f")[0] == ["enc.0.conv.bias", "enc.0.conv.weight", "enc.1.fc.weight"]
    assert select(slots, ["*.fc.*"], False, "f")[0] == ["enc.1.fc.weight"]
    assert select(slots, [r"re:conv\.(weight|bias)$"], True, "f")[0] == ["enc.0.conv.bias", "enc.0.conv.weight"]
    with pytest.raises(CheckpointError, match=r"slot 'pos_ids': dtype I64 cannot be analysed"):
        select(slots, ["pos_*"], False, "f")
    assert matrix_shape((8, 3, 3, 3)) == (8, 27) and matrix_shape((5,)) == (1, 5) and matrix_shape(()) is None


def test_discover_folders(tmp_path, gen):
    (tmp_path / "zoo").mkdir()
    for i in range(3):
        save_file({"w": torch.randn(2, 2, generator=gen)}, tmp_path / "zoo" / f"m{i}.safetensors")
    hf = tmp_path / "zoo" / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    save_file({"w": torch.randn(2, 2, generator=gen)}, hf / "model-00001-of-00002.safetensors")
    save_file({"v": torch.randn(2, 2, generator=gen)}, hf / "model-00002-of-00002.safetensors")
    _adapter(tmp_path / "zoo" / "lora", {"r": 2, "lora_alpha": 2}, MODS[:1], gen)
    (tmp_path / "zoo" / "notes.txt").write_text("ignored")
    cks = discover([tmp_path / "zoo"])
    names = [c.name.rsplit("/", 1)[-1] for c in cks]
    assert names == ["hf", "lora", "m0.safetensors", "m1.safetensors", "m2.safetensors"]
    assert set(cks[0].slots) == {"w", "v"}, "shards of one model are one checkpoint"
    # the index of a sharded model names every shard and where each tensor is; a shard that is
    # missing used to drop its tensors silently (the folder's other shards were analysed alone)
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}))
    assert set(discover([hf])[0].slots) == {"w", "v"}
    (hf / "model-00002-of-00002.safetensors").rename(hf / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=r"index\.json: names shard\(s\) that are not in the folder: "
                                              r"model-00002-of-00002\.safetensors"):
        discover([tmp_path / "zoo"])
    (hf / "elsewhere.safetensors").rename(hf / "model-00002-of-00002.safetensors")
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "model-00001-of-00002.safetensors", "u": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"00002\.safetensors: slot 'u': the shard index places this tensor here"):
        discover([hf])
    (hf / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"needs a non-empty 'weight_map'"):
        discover([hf])
    (hf / "model.safetensors.index.json").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no checkpoints found"):
        discover([tmp_path / "empty"])
    with pytest.raises(CheckpointError, match="no such file"):
        discover([tmp_path / "missing"])
