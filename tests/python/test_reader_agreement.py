"""One reader, two front ends: a corpus of good and malformed safetensors files, Hugging Face
folders and PEFT adapters goes through the Python API (unisub.io) and through the C++ tool
(unisub-analyze --check, and a real run on each refused case). Both must give the same verdict:
accept with bit-identical tensors (names, dtypes, shapes, FNV-1a hashes of the bytes, lora_B
scaled), or refuse with the same message naming the file; the tool then exits 2 and writes
nothing."""
import json
import re
import struct
import subprocess

import pytest
import torch

from test_analyze_cpp import tool
from unisub.io import CheckpointError, PeftAdapter, open_checkpoint, save_file


def pcre2():
    return torch.classes.unisub.SafetensorsFile.built_with_pcre2()


def fnv1a(t: torch.Tensor) -> str:
    h = 14695981039346656037
    for b in t.contiguous().reshape(-1).view(torch.uint8).tolist() if t.numel() else []:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


# ---- building blocks ------------------------------------------------------------------------
def st_bytes(header: bytes, data: bytes, length=None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def st_header(entries: dict, pad_to=8) -> bytes:
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % pad_to)


A = torch.arange(12, dtype=torch.float32).reshape(3, 4)
B = torch.arange(4, dtype=torch.float64)
AB = A.numpy().tobytes() + B.numpy().tobytes()


def two(a=(0, 48), b=(48, 80), a_name="a", extra=None):
    h = {a_name: {"dtype": "F32", "shape": [3, 4], "data_offsets": list(a)},
         "b": {"dtype": "F64", "shape": [4], "data_offsets": list(b)}}
    h.update(extra or {})
    return h


def valid_header_text():
    return json.dumps(two(), separators=(",", ":")).encode()


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


MODS = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"]


def adapter(folder, config, shapes=None, gen=None, modules=MODS, config_text=None):
    """A PEFT folder; ``shapes`` maps a module to (A shape, B shape), default rank config["r"]."""
    gen = gen or torch.Generator().manual_seed(0)
    tensors = {}
    for mod in modules:
        r = config.get("r", 8) if isinstance(config, dict) and isinstance(config.get("r", 8), int) else 4
        sa, sb = (shapes or {}).get(mod, ((r, 6), (5, r)))
        tensors[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(sa, generator=gen)
        tensors[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(sb, generator=gen)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(config_text if config_text is not None else json.dumps(config))
    return folder


def hf_folder(folder, index_text):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": A}, folder / "model-00001-of-00002.safetensors")
    save_file({"v": B}, folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(index_text)
    return folder


def deep(n):
    return "[" * n + "]" * n


# ---- the corpus: name -> builder(tmp) returning the path; every case either reader may see ----
def cases():
    hv = valid_header_text()
    padded = hv + b" " * 7  # the reference writer pads the header with spaces to 8 bytes
    c = {}
    c["ok_two_tensors"] = lambda d: write(d / "ok.safetensors", st_bytes(st_header(two()), AB))
    c["ok_padded_header"] = lambda d: write(d / "pad.safetensors", st_bytes(padded, AB))
    c["ok_unaligned_offsets"] = lambda d: write(d / "odd.safetensors", st_bytes(hv + b" ", AB))
    c["ok_empty_tensor_and_metadata"] = lambda d: write(d / "e.safetensors", st_bytes(st_header(two(extra={
        "z": {"dtype": "F16", "shape": [0, 3], "data_offsets": [80, 80]}, "__metadata__": {"k": "v"}})), AB))
    c["ok_surrogate_pair_name"] = lambda d: write(d / "sp.safetensors", st_bytes(
        hv.replace(b'"a"', b'"\\ud83d\\ude00"'), AB))
    c["truncated_data"] = lambda d: write(d / "t.safetensors", st_bytes(st_header(two()), AB)[:-7])
    c["truncated_to_5_bytes"] = lambda d: write(d / "t5.safetensors", b"\x10\0\0\0\0")
    for k in range(1, 5):  # a length field short by k lands in the padding: every tensor read shifted
        c[f"length_short_by_{k}"] = lambda d, k=k: write(d / f"short{k}.safetensors",
                                                         st_bytes(padded, AB, length=len(padded) - k))
    c["length_long_by_1"] = lambda d: write(d / "long.safetensors", st_bytes(padded, AB, length=len(padded) + 1))
    c["gap_between_tensors"] = lambda d: write(d / "gap.safetensors", st_bytes(
        st_header(two(a=(0, 48), b=(56, 88))), AB + b"\0" * 8))
    c["gap_at_start"] = lambda d: write(d / "gap0.safetensors", st_bytes(
        st_header(two(a=(8, 56), b=(56, 88))), b"\0" * 8 + AB))
    c["overlap"] = lambda d: write(d / "ov.safetensors", st_bytes(
        st_header(two(a=(0, 48), b=(40, 72))), AB[:72]))
    c["trailing_bytes"] = lambda d: write(d / "trail.safetensors", st_bytes(st_header(two()), AB + b"\0" * 4))
    c["byte_order_mark"] = lambda d: write(d / "bom.safetensors", st_bytes(b"\xef\xbb\xbf" + hv, AB))
    c["nan_literal"] = lambda d: write(d / "nan.safetensors", st_bytes(
        hv.replace(b'"shape":[4]', b'"shape":[4],"x":NaN'), AB))
    c["infinity_literal"] = lambda d: write(d / "inf.safetensors", st_bytes(
        hv.replace(b'"shape":[4]', b'"shape":[4],"x":-Infinity'), AB))
    c["lone_surrogate"] = lambda d: write(d / "ls.safetensors", st_bytes(hv.replace(b'"a"', b'"\\ud800a"'), AB))
    c["lone_low_surrogate"] = lambda d: write(d / "ls2.safetensors", st_bytes(hv.replace(b'"a"', b'"\\udc00"'), AB))
    c["invalid_utf8_name"] = lambda d: write(d / "u8.safetensors", st_bytes(hv.replace(b'"a"', b'"\xc3("'), AB))
    c["utf8_encoded_surrogate"] = lambda d: write(d / "u8s.safetensors", st_bytes(hv.replace(b'"a"', b'"\xed\xa0\x80"'), AB))
    c["nul_padding"] = lambda d: write(d / "nul.safetensors", st_bytes(hv + b"\0" * 7, AB))
    c["leading_space"] = lambda d: write(d / "lead.safetensors", st_bytes(b" " + hv, AB))
    c["deep_nesting"] = lambda d: write(d / "deep.safetensors", st_bytes(
        hv[:-1] + b',"__metadata__":' + deep(5000).encode() + b"}", AB))
    c["duplicate_key"] = lambda d: write(d / "dup.safetensors", st_bytes(
        hv[:-1] + b',"a":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]}}', AB))
    c["control_char_in_name"] = lambda d: write(d / "cc.safetensors", st_bytes(hv.replace(b'"a"', b'"a\tb"'), AB))
    c["shape_as_string"] = lambda d: write(d / "ss.safetensors", st_bytes(
        hv.replace(b'"shape":[4]', b'"shape":"4"'), AB))
    c["shape_float"] = lambda d: write(d / "sf.safetensors", st_bytes(hv.replace(b'"shape":[4]', b'"shape":[4.0]'), AB))
    c["shape_exponent"] = lambda d: write(d / "se.safetensors", st_bytes(hv.replace(b'"shape":[4]', b'"shape":[4e0]'), AB))
    c["shape_bool"] = lambda d: write(d / "sb.safetensors", st_bytes(hv.replace(b'"shape":[4]', b'"shape":[true]'), AB))
    c["offsets_float"] = lambda d: write(d / "of.safetensors", st_bytes(
        hv.replace(b'"data_offsets":[48,80]', b'"data_offsets":[48,80.0]'), AB))
    c["offsets_huge"] = lambda d: write(d / "oh.safetensors", st_bytes(
        hv.replace(b'"data_offsets":[48,80]', b'"data_offsets":[48,18446744073709551696]'), AB))
    c["unknown_dtype"] = lambda d: write(d / "dt.safetensors", st_bytes(hv.replace(b'"F64"', b'"F65"'), AB))
    c["metadata_not_strings"] = lambda d: write(d / "md.safetensors", st_bytes(
        hv[:-1] + b',"__metadata__":{"k":1}}', AB))
    c["header_is_array"] = lambda d: write(d / "arr.safetensors", st_bytes(b"[1,2]", b""))
    c["trailing_comma"] = lambda d: write(d / "tc.safetensors", st_bytes(hv[:-1] + b",}", AB))
    c["huge_empty_shape"] = lambda d: write(d / "hs.safetensors", st_bytes(
        hv[:-1] + b',"z":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[80,80]}}', AB))

    index = {"metadata": {"total_size": 80},
             "weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}
    c["ok_hf_folder_by_index"] = lambda d: hf_folder(d / "hf", json.dumps(index))

    def escaping_index(d):
        d.mkdir(parents=True)
        save_file({"v": B}, d / "x.safetensors")  # exists: only the confinement rule can refuse it
        return hf_folder(d / "hf", json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors",
                                                              "v": "../x.safetensors"}}))
    c["index_shard_outside_folder"] = escaping_index
    c["index_absolute_shard"] = lambda d: hf_folder(d / "hf", json.dumps(
        {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": str(d / "hf" / "model-00002-of-00002.safetensors")}}))
    c["index_missing_shard"] = lambda d: hf_folder(d / "hf", json.dumps(
        {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00003-of-00003.safetensors"}}))
    c["index_nan"] = lambda d: hf_folder(d / "hf", '{"metadata": {"total_size": NaN}, "weight_map": {}}')
    c["index_deep"] = lambda d: hf_folder(d / "hf", '{"metadata": ' + deep(5000) + ', "weight_map": {}}')
    c["index_wrong_shard"] = lambda d: hf_folder(d / "hf", json.dumps(
        {"weight_map": {"w": "model-00002-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}))
    c["index_name_not_string"] = lambda d: hf_folder(d / "hf", json.dumps({"weight_map": {"w": 1, "v": 2}}))

    base = {"r": 4, "lora_alpha": 16}
    c["ok_adapter"] = lambda d: adapter(d / "ad", base)
    c["ok_adapter_rslora"] = lambda d: adapter(d / "ad", {**base, "use_rslora": True})
    c["adapter_1d_lora_b"] = lambda d: adapter(d / "ad", base, {MODS[0]: ((4, 6), (5,))})
    c["adapter_rank0_factors"] = lambda d: adapter(d / "ad", base, {MODS[0]: ((0, 6), (5, 0))})
    c["adapter_rank0_config"] = lambda d: adapter(d / "ad", {"r": 0, "lora_alpha": 16})
    c["adapter_rank_mismatch"] = lambda d: adapter(d / "ad", base, {MODS[1]: ((3, 6), (5, 3))})
    c["adapter_r_string"] = lambda d: adapter(d / "ad", base, config_text='{"r": "4", "lora_alpha": 16}')
    c["adapter_r_float"] = lambda d: adapter(d / "ad", base, config_text='{"r": 4.0, "lora_alpha": 16}')
    c["adapter_r_bool"] = lambda d: adapter(d / "ad", base, config_text='{"r": true, "lora_alpha": 16}')
    c["adapter_alpha_null"] = lambda d: adapter(d / "ad", base, config_text='{"r": 4, "lora_alpha": null}')
    c["adapter_alpha_overflow"] = lambda d: adapter(d / "ad", base, config_text='{"r": 4, "lora_alpha": 1e999}')
    c["adapter_rslora_string"] = lambda d: adapter(d / "ad", base, config_text='{"r": 4, "use_rslora": "yes"}')
    c["adapter_config_nan"] = lambda d: adapter(d / "ad", base, config_text='{"r": 4, "lora_alpha": NaN}')
    c["adapter_config_bom"] = lambda d: adapter(d / "ad", base, config_text='\ufeff{"r": 4, "lora_alpha": 16}')
    c["adapter_config_deep"] = lambda d: adapter(d / "ad", base, config_text='{"r": 4, "x": ' + deep(5000) + "}")
    c["adapter_config_duplicate"] = lambda d: adapter(d / "ad", base, config_text='{"r": 4, "r": 8}')
    c["adapter_config_array"] = lambda d: adapter(d / "ad", base, config_text="[4, 16]")
    c["adapter_rank_pattern_list"] = lambda d: adapter(d / "ad", {**base, "rank_pattern": [["v_proj", 2]]})
    c["adapter_rank_pattern_value_float"] = lambda d: adapter(d / "ad", {**base, "rank_pattern": {"v_proj": 2.5}})
    c["adapter_no_weights"] = lambda d: (adapter(d / "ad", base) / "adapter_model.safetensors").unlink() or d / "ad"
    return c


# Cases whose adapter config has rank_pattern / alpha_pattern: without PCRE2 both front ends refuse
# them ("built without PCRE2"), with it they are read.
PATTERN_CASES = {
    "ok_adapter_patterns": lambda d: adapter(d / "ad", {"r": 4, "lora_alpha": 8,
                                                        "rank_pattern": {"v_proj": 2, "layers.1.mlp.down_proj": 6},
                                                        "alpha_pattern": {"self_attn.v_proj": 32, "v_proj": 1}},
                                             {MODS[1]: ((2, 6), (5, 2)), MODS[2]: ((6, 6), (5, 6))}),
    "ok_adapter_60000_char_module": lambda d: adapter(d / "ad", {"r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": 2}},
                                                      {"m" * 60000 + ".q_proj": ((2, 6), (5, 2))}, modules=["m" * 60000 + ".q_proj"]),
    "adapter_pattern_bad_regex": lambda d: adapter(d / "ad", {"r": 4, "lora_alpha": 8, "rank_pattern": {"(": 2}}),
}


def python_verdict(path):
    """("ok", [(hash, dtype, shape, name)...]) or ("error", message) through unisub.io."""
    try:
        ck = open_checkpoint(path)
        rows = []
        for k in sorted(ck.slots):
            t = ck.get(k)
            rows.append((fnv1a(t), ck.slots[k][0], list(t.shape), k))
        return "ok", rows
    except CheckpointError as e:
        return "error", str(e)


def cpp_verdicts(paths):
    run = subprocess.run([tool(), "--check", *map(str, paths)], capture_output=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr.decode(errors="replace")
    out, current = [], None
    for line in run.stdout.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("ok "):
            current = ("ok", [])
            out.append(current)
        elif line.startswith("error "):
            out.append(("error", line[len("error "):]))
            current = None
        else:
            h, dtype, rest = line.strip().split(" ", 2)
            shape_end = rest.index("]") + 1
            current[1].append((h, dtype, json.loads(rest[:shape_end]), json.loads(rest[shape_end + 1:])))
    assert len(out) == len(paths), run.stdout[-2000:]
    return out


def _corpus(tmp_path):
    all_cases = dict(cases(), **PATTERN_CASES)
    paths = {}
    for name, build in all_cases.items():
        paths[name] = build(tmp_path / name)
    return paths


def test_both_front_ends_give_the_same_verdict(tmp_path):
    paths = _corpus(tmp_path)
    names = list(paths)
    cpp = cpp_verdicts([paths[n] for n in names])
    refused = []
    for name, (c_kind, c_val) in zip(names, cpp):
        p_kind, p_val = python_verdict(paths[name])
        expect_ok = name.startswith("ok_") and (name not in PATTERN_CASES or pcre2())
        assert p_kind == c_kind, f"{name}: Python says {p_kind} ({p_val}), C++ says {c_kind} ({c_val})"
        assert (p_kind == "ok") == expect_ok, f"{name}: {p_kind}: {p_val}"
        if p_kind == "ok":
            assert p_val == c_val, f"{name}: the tensors differ"
            assert p_val, name
        else:
            assert p_val == c_val, f"{name}: different messages"
            assert str(tmp_path / name) in p_val, f"{name}: the message names no file of the case: {p_val}"
            assert "Traceback" not in p_val and "Exception raised from" not in p_val
            refused.append(name)
    assert len(refused) > 50
    if not pcre2():
        assert "built without PCRE2" in dict(zip(names, cpp))["ok_adapter_patterns"][1]

    # a real run on each refused case: exit status 2, the same message on stderr, nothing written
    for name in refused:
        out = tmp_path / "out" / name
        run = subprocess.run([tool(), str(paths[name]), "--out", str(out)], capture_output=True, timeout=300)
        err = run.stderr.decode("utf-8", "surrogateescape")
        assert run.returncode == 2, f"{name}: exit {run.returncode}: {err}"
        assert str(tmp_path / name) in err, f"{name}: {err}"
        assert not out.exists(), name


def test_accepted_files_read_the_bytes_written(tmp_path):
    paths = _corpus(tmp_path)
    ck = open_checkpoint(paths["ok_padded_header"])
    assert torch.equal(ck.get("a"), A) and torch.equal(ck.get("b"), B)
    ck = open_checkpoint(paths["ok_unaligned_offsets"])
    assert torch.equal(ck.get("a"), A) and torch.equal(ck.get("b"), B)
    ck = open_checkpoint(paths["ok_surrogate_pair_name"])
    assert set(ck.slots) == {"\U0001F600", "b"} and torch.equal(ck.get("\U0001F600"), A)
    ck = open_checkpoint(paths["ok_hf_folder_by_index"])
    assert torch.equal(ck.get("w"), A) and torch.equal(ck.get("v"), B)


def _peft_pattern_key(patterns, module):
    """PEFT's rule (peft.utils.other.get_pattern_key), the reference the library must follow."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


@pytest.mark.parametrize("patterns,modules", [
    ({"v_proj": 2, "layers.1.mlp.down_proj": 6}, MODS),
    ({"self_attn.v_proj": 3, "v_proj": 1}, MODS),                      # first key in file order wins
    ({"q_proj|v_proj": 2}, MODS),                                       # alternation inside the group
    ({"proj": 2}, MODS),                                                # whole dot-separated tail only
    ({"layers\\.[01]\\..*_proj": 5}, MODS),
    ({"^model.layers.0.self_attn.q_proj": 2}, MODS),
    ({"oj": 2, "q_pr": 3}, MODS),                                       # no dot boundary: no match
    ({"output.dense": 2}, ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense",
                           "bert.encoder.layer.0.attention.output.densex"]),
    ({"q_proj": 2}, ["m" * 60000 + ".q_proj", "m" * 60000 + "q_proj"]),  # std::regex crashed here
    ({"(?:m)+\\.q_proj": 2}, ["m" * 60000 + ".q_proj"]),
])
def test_rank_pattern_matching_is_peft_s(tmp_path, patterns, modules):
    if not pcre2():
        pytest.skip("libunisub was built without PCRE2")
    r, alpha = 4, 8
    ranks = {m: patterns[_peft_pattern_key(patterns, m)] if _peft_pattern_key(patterns, m) in patterns else r
             for m in modules}
    folder = adapter(tmp_path / "ad", {"r": r, "lora_alpha": alpha, "rank_pattern": patterns,
                                       "alpha_pattern": {k: 10 * v for k, v in patterns.items()}},
                     {m: ((ranks[m], 6), (5, ranks[m])) for m in modules}, modules=modules)
    ad = PeftAdapter(folder)
    for m in modules:
        key = _peft_pattern_key(patterns, m)
        a = 10 * patterns[key] if key in patterns else alpha
        assert ad.scaling(f"{m}.lora_B.weight") == a / ranks[m], m[-40:]


def test_bin_adapters_follow_the_same_config_rules(tmp_path):
    """adapter_model.bin is read with torch.load, its config and scaling by the library: the same
    slots, scalings and tensors as the safetensors copy, and the same refusals."""
    cfg = {"r": 4, "lora_alpha": 16, "use_rslora": True}
    st = adapter(tmp_path / "st", cfg)
    pt = tmp_path / "pt"
    pt.mkdir()
    from unisub.io import load_file

    tensors = load_file(st / "adapter_model.safetensors")
    torch.save(tensors, pt / "adapter_model.bin")
    (pt / "adapter_config.json").write_text(json.dumps(cfg))
    a, b = PeftAdapter(st), PeftAdapter(pt)
    assert a.slots == b.slots and a.scalings == b.scalings and len(a.scalings) == 3
    assert a.config == b.config == cfg
    for k in a.slots:
        assert torch.equal(a.get(k), b.get(k)) and torch.equal(a.get_unscaled(k), b.get_unscaled(k)), k
    assert b.file_of(f"{MODS[0]}.lora_A.weight") == str(pt / "adapter_model.bin")
    tensors[f"base_model.model.{MODS[0]}.lora_B.weight"] = torch.ones(5)
    torch.save(tensors, pt / "adapter_model.bin")
    with pytest.raises(CheckpointError, match=r"adapter_model\.bin: slot '.*q_proj\.lora_B\.weight': a LoRA factor needs 2"):
        PeftAdapter(pt)
    (pt / "adapter_config.json").write_text('{"r": 4, "lora_alpha": NaN}')
    with pytest.raises(CheckpointError, match=r"pt/adapter_config\.json: cannot read adapter config: invalid JSON"):
        PeftAdapter(pt)
