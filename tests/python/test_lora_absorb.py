"""absorb: a new adapter into a compressed zoo, against compressing the enlarged zoo from scratch
(float64 storage, so only the Grams' rounding separates the two). Bounds: spectra 1e-10
relative; bases compared as projectors, 1e-8; reconstructions 1e-8 relative."""
import pytest
import torch

import lora_zoo
from lora_zoo import single_thread  # noqa: F401  (autouse)
from unisub.lora import LoraZoo, absorb, compress

NEW = lora_zoo.HELD_OUT


def rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def same_bases(a, b, tol=1e-8):
    return float((a @ a.T - b @ b.T).abs().max()) <= tol


@pytest.mark.parametrize("kw", [{"energy": 0.8}, {}])  # truncated, and lossless (every direction)
def test_absorb_with_updated_bases_equals_compressing_from_scratch(kw, tmp_path):
    lora_zoo.require()
    old = compress(lora_zoo.zoo_paths(), dtype=torch.float64, keep_state=True, **kw)
    old.save(tmp_path / "zoo.safetensors")
    old = LoraZoo.load(tmp_path / "zoo.safetensors")  # the state survives the file
    assert old.has_state
    new, rep = absorb(old, lora_zoo.zoo_folder() / NEW, update_bases=True)
    full = compress(lora_zoo.zoo_paths(lora_zoo.ZOO + [NEW]), dtype=torch.float64, keep_state=True, **kw)
    assert new.names == full.names and rep["updated_bases"]
    assert rep["relative_error"] == pytest.approx(full.errors()[-1]["relative_error"], abs=1e-9)
    for mod, mb in new.modules.items():
        ref = full.modules[mod]
        assert mb.ranks == ref.ranks, mod
        for a, b in ((mb.eigenvalues_out, ref.eigenvalues_out), (mb.eigenvalues_in, ref.eigenvalues_in)):
            k = min(a.numel(), b.numel())
            assert torch.allclose(a[:k], b[:k], rtol=0, atol=1e-10 * float(b[0]))
        assert same_bases(mb.U, ref.U) and same_bases(mb.V, ref.V), mod
        assert rel(mb.reconstruct(new.count - 1), ref.reconstruct(full.count - 1)) <= 1e-8
        if not kw:  # lossless: the old adapters' reconstructions were exact, so they re-express exactly
            for i in range(old.count):
                assert rel(mb.reconstruct(i), ref.reconstruct(i)) <= 1e-8, (mod, i)
    from test_lora_roundtrip import reference_deltas

    errs = new.errors()
    for i, name in enumerate(old.names):  # the stored residual bounds the true one (and is it, when lossless)
        D = reference_deltas(lora_zoo.zoo_folder() / name)
        res = sum(float(torch.linalg.norm(D[mod] - mb.reconstruct(i)) ** 2) for mod, mb in new.modules.items())
        true = (res / sum(float(torch.linalg.norm(D[mod]) ** 2) for mod in D)) ** 0.5
        assert true <= errs[i]["relative_error"] + 1e-9
        if not kw:
            assert errs[i]["relative_error"] <= 1e-6
    if kw:
        assert set(new.options["residual_bounds"]) <= set(old.names)


def test_absorb_without_update_projects_on_fixed_bases():
    lora_zoo.require()
    old = compress(lora_zoo.zoo_paths(), energy=0.8, dtype=torch.float64)
    new, rep = absorb(old, lora_zoo.zoo_folder() / NEW, name="held_out")
    assert new.names[-1] == "held_out" and not rep["updated_bases"]
    from test_lora_roundtrip import reference_deltas

    ref = reference_deltas(lora_zoo.zoo_folder() / NEW)
    res = tot = 0.0
    for mod, mb in new.modules.items():
        assert torch.equal(mb.U, old.modules[mod].U) and torch.equal(mb.coefficients[:-1], old.modules[mod].coefficients)
        U, V = mb.U, mb.V
        assert torch.allclose(mb.coefficients[-1], U.T @ ref[mod] @ V, atol=1e-12)
        res += float(torch.linalg.norm(ref[mod] - mb.reconstruct(new.count - 1)) ** 2)
        tot += float(torch.linalg.norm(ref[mod]) ** 2)
    assert rep["relative_error"] == pytest.approx((res / tot) ** 0.5, abs=1e-9)
    with pytest.raises(ValueError, match="keep_state"):
        absorb(old, lora_zoo.zoo_folder() / NEW, name="x", update_bases=True)
    with pytest.raises(ValueError, match="already has"):
        absorb(new, lora_zoo.zoo_folder() / NEW, name="held_out")
