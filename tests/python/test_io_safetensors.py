"""The safetensors reader and writer: round trips, one-slot reads, and an error for every kind of
broken file that names the file and the slot. A fuzz test mutates real headers."""
import json
import random
import struct

import pytest
import torch

from unisub.io import CheckpointError, SafetensorsFile, load_file, read_header, save_file

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.bool]


def _sample(gen):
    out = {}
    for i, dt in enumerate(DTYPES):
        shape = (3, i + 1, 2)
        if dt.is_floating_point:
            out[f"t{i}"] = torch.randn(shape, generator=gen).to(dt)
        else:
            out[f"t{i}"] = torch.randint(0, 2 if dt == torch.bool else 100, shape, generator=gen).to(dt)
    out["empty"] = torch.zeros(0, 4)
    out["scalar"] = torch.tensor(3.5)
    return out


def test_round_trip_every_dtype(tmp_path, gen):
    tensors = _sample(gen)
    save_file(tensors, tmp_path / "a.safetensors", metadata={"k": "v"})
    back = load_file(tmp_path / "a.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    assert read_header(tmp_path / "a.safetensors").metadata == {"k": "v"}
    assert not list(tmp_path.glob("*.partial")), "temporary file left behind"


def _raw(tmp_path, header_obj, data=b"", name="x.safetensors", length=None):
    raw = json.dumps(header_obj).encode()
    p = tmp_path / name
    p.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return p


def test_read_one_slot_matches_bytes(tmp_path):
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.arange(4, dtype=torch.float64)
    # Unaligned offsets on purpose: a 1-byte header pad puts the data at an odd address.
    hdr = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
           "b": {"dtype": "F64", "shape": [4], "data_offsets": [24, 56]}}
    p = _raw(tmp_path, hdr, a.numpy().tobytes() + b.numpy().tobytes())
    f = SafetensorsFile(p)
    assert torch.equal(f.get("b"), b) and torch.equal(f.get("a"), a)


@pytest.mark.parametrize("case, hdr, data, pattern", [
    ("past end", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "past the end"),
    ("span", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, "needs 12"),
    ("dtype", {"w": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
    ("shape", {"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "non-negative"),
    ("offsets", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16, "begin <= end"),
    ("overlap", {"v": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                 "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, "overlap"),
    ("entry", {"w": [1, 2]}, b"", "must be an object"),
])
def test_lying_headers_name_file_and_slot(tmp_path, case, hdr, data, pattern):
    p = _raw(tmp_path, hdr, data)
    with pytest.raises(CheckpointError, match=pattern) as e:
        read_header(p)
    assert str(p) in str(e.value) and "slot 'w'" in str(e.value)


def test_truncated_and_garbage_files(tmp_path):
    save_file({"w": torch.ones(10, 10)}, tmp_path / "ok.safetensors")
    whole = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(whole[:-7])
    with pytest.raises(CheckpointError, match=r"t\.safetensors: slot 'w'.*past the end"):
        read_header(tmp_path / "t.safetensors")
    (tmp_path / "h.safetensors").write_bytes(whole[:20])
    with pytest.raises(CheckpointError, match="header length field says"):
        read_header(tmp_path / "h.safetensors")
    (tmp_path / "s.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="truncated: 3 bytes"):
        read_header(tmp_path / "s.safetensors")
    p = _raw(tmp_path, {}, name="j.safetensors")
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(CheckpointError, match="not valid UTF-8 JSON"):
        read_header(p)


def test_file_changed_after_header_was_read(tmp_path):
    p = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(4, 4)}, p)
    f = SafetensorsFile(p)
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="changed size"):
        f.get("w")


def mutate_header(raw: bytes, rng: random.Random) -> bytes:
    """One random edit of a header: a digit, a byte, a deleted or duplicated span."""
    b = bytearray(raw)
    kind = rng.randrange(4)
    i = rng.randrange(len(b))
    if kind == 0:
        digits = [j for j, c in enumerate(b) if chr(c).isdigit()]
        if digits:
            b[rng.choice(digits)] = ord(str(rng.randrange(10)))
    elif kind == 1:
        b[i] = rng.randrange(256)
    elif kind == 2:
        del b[i:i + rng.randrange(1, 6)]
    else:
        j = rng.randrange(i, min(len(b), i + 8) + 1)
        b[i:i] = b[i:j]
    return bytes(b)


def fuzz_cases(tmp_path, n, seed):
    """Yields (path, parsed_ok) for mutated copies of a small valid file."""
    p0 = tmp_path / "base.safetensors"
    save_file({"a.weight": torch.randn(3, 4), "b.weight": torch.randn(2, 2).half(), "c": torch.arange(3)}, p0)
    whole = p0.read_bytes()
    (hlen,) = struct.unpack("<Q", whole[:8])
    header, data = whole[8:8 + hlen], whole[8 + hlen:]
    rng = random.Random(seed)
    for k in range(n):
        h = mutate_header(header, rng)
        p = tmp_path / f"fuzz{k}.safetensors"
        p.write_bytes(struct.pack("<Q", len(h)) + h + data)
        yield p


def test_fuzz_mutated_headers_give_clear_errors_or_valid_reads(tmp_path, gen):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    ok = bad = 0
    for p in fuzz_cases(tmp_path, 400, seed):
        try:
            h = read_header(p)
        except CheckpointError as e:
            assert str(p) in str(e)
            bad += 1
            continue
        ok += 1
        f = SafetensorsFile(p, h)
        for k, info in h.tensors.items():  # every accepted entry must be readable as declared
            t = f.get(k)
            assert tuple(t.shape) == info.shape and t.dtype == info.torch_dtype
    assert bad > 100, f"the fuzzer hardly broke anything ({bad} errors of 400)"
