"""merge: PEFT adapters -> one PEFT adapter, against entrywise float64 references written here
(mean, task arithmetic, TIES, DARE, DARE-TIES, subspace). The merged adapter is read back through
its own files (s·B·A, float32 factors: bound 1e-5 relative) and, for one method, through PEFT."""
import math

import pytest
import torch

import lora_zoo
from lora_zoo import single_thread  # noqa: F401  (autouse)
from test_lora_roundtrip import merge_bound, reference_deltas
from unisub.lora import compress, dare_mask, merge

DENSE_RANK = 384  # min(m, n) of every module: the written adapter is the exact merge
QUERY = ["*.query"]  # dense merges on the six 384 x 384 query modules only (time)


def rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture(scope="module")
def refs():
    lora_zoo.require()
    with lora_zoo.one_thread():
        return [reference_deltas(p) for p in lora_zoo.zoo_paths()]


def ties_reference(deltas, density):
    """TIES (Yadav et al.), entrywise: keep each task's top ``density`` entries by magnitude,
    elect the sign of the kept entries' sum, average the kept entries of that sign."""
    flat = [d.reshape(-1) for d in deltas]
    kept = []
    for f in flat:
        k = max(1, int(round(density * f.numel())))
        thr = f.abs().sort(descending=True).values[k - 1]
        kept.append(torch.where(f.abs() >= thr, f, torch.zeros_like(f)))
    kept = torch.stack(kept)
    sign = torch.sign(kept.sum(0))
    agree = (kept * sign > 0).double()  # entries whose sign is the elected one (sign 0: none)
    out = (kept * agree).sum(0) / agree.sum(0).clamp_min(1)
    return out.reshape(deltas[0].shape)


def read_merged(folder):
    return reference_deltas(folder)


@pytest.mark.parametrize("method", ["mean", "task_arithmetic"])
def test_linear_merges_are_exact_low_rank(refs, method, tmp_path):
    w = [1.0, -0.5, 2.0, 0.25]
    kw = {"weights": w, "scale": 0.7} if method == "task_arithmetic" else {}
    rep = merge(lora_zoo.zoo_paths(), tmp_path / "m", method=method, **kw)
    got = read_merged(tmp_path / "m")
    lam, ws = (0.7, w) if kw else (1 / 4, [1.0] * 4)
    for mod in got:
        ref = lam * sum(wi * r[mod] for wi, r in zip(ws, refs))
        assert rel(got[mod], ref) <= 1e-5, mod
        assert rep["modules"][mod]["relative_error"] <= 1e-12


def test_ties_equals_entrywise_reference_through_peft(refs, tmp_path):
    mods = [m for m in refs[0] if m.endswith(".query")]
    merge(lora_zoo.zoo_paths(), tmp_path / "t", method="ties", density=0.3, out_rank=DENSE_RANK, modules=QUERY)
    got = lora_zoo.peft_deltas(tmp_path / "t", mods)  # loads in PEFT; merged − base
    base = lora_zoo.base_model()
    for mod in mods:
        ref = ties_reference([r[mod] for r in refs], 0.3)
        assert (got[mod] - ref).abs().max() <= merge_bound(base.get_submodule(mod).weight, ref, DENSE_RANK), mod


def test_dare_is_seeded_and_matches_reference(refs, tmp_path):
    p = 0.6
    for out, seed in (("d", 7), ("d2", 7), ("d3", 8)):
        merge(lora_zoo.zoo_paths(), tmp_path / out, method="dare", drop=p, seed=seed, out_rank=DENSE_RANK,
              modules=QUERY)
    got, again, other = read_merged(tmp_path / "d"), read_merged(tmp_path / "d2"), read_merged(tmp_path / "d3")
    assert sorted(got) == sorted(m for m in refs[0] if m.endswith(".query"))
    for mod in got:
        masks = [dare_mask(refs[0][mod].shape, p, 7, i, mod) for i in range(4)]
        frac = sum(float(m.double().mean()) for m in masks) / 4
        assert abs(frac - (1 - p)) < 0.01  # ~147k draws per mask
        ref = sum(r[mod] * mk / (1 - p) for r, mk in zip(refs, masks)) / 4
        assert rel(got[mod], ref) <= 1e-5, mod
        assert torch.equal(got[mod], again[mod])
        assert rel(other[mod], ref) > 0.1


def test_dare_ties(refs, tmp_path):
    mod = next(m for m in refs[0] if m.endswith(".query"))
    merge(lora_zoo.zoo_paths(), tmp_path / "dt", method="dare_ties", drop=0.3, density=0.5, seed=1,
          out_rank=DENSE_RANK, modules=[mod])
    got = read_merged(tmp_path / "dt")[mod]
    dropped = [r[mod] * dare_mask(r[mod].shape, 0.3, 1, i, mod) / 0.7 for i, r in enumerate(refs)]
    assert rel(got, ties_reference(dropped, 0.5)) <= 1e-5


def test_subspace_merge_equals_the_zoos_coefficient_merge(refs, tmp_path):
    """unisub.merge's subspace merge of the dense ΔW equals U (Σ C_i / M) Vᵀ of a zoo compressed at
    the same energy: the zoo's bases are those of the same (uncentred) Grams."""
    merge(lora_zoo.zoo_paths(), tmp_path / "s", method="subspace", energy=0.8)
    got = read_merged(tmp_path / "s")
    zoo = compress(lora_zoo.zoo_paths(), energy=0.8, dtype=torch.float64)
    for mod, mb in zoo.modules.items():
        ref = mb.U @ mb.coefficients.mean(0) @ mb.V.T
        assert rel(got[mod], ref) <= 1e-5, mod
        # and it is Σ_i U Uᵀ ΔW_i V Vᵀ / M of the float64 references
        U, V = mb.U, mb.V
        assert rel(got[mod], sum(U @ (U.T @ r[mod] @ V) @ V.T for r in refs) / 4) <= 1e-5


def test_truncated_output_reports_its_error(refs, tmp_path):
    rep = merge(lora_zoo.zoo_paths(), tmp_path / "tr", method="ties", out_rank=4, modules=QUERY)
    got = read_merged(tmp_path / "tr")
    mod = rep["worst_module"]
    dense = merge(lora_zoo.zoo_paths(), tmp_path / "full", method="ties", out_rank=DENSE_RANK, modules=QUERY)
    full = read_merged(tmp_path / "full")[mod]
    assert dense["modules"][mod]["relative_error"] <= 1e-12
    assert rel(got[mod], full) == pytest.approx(rep["modules"][mod]["relative_error"], abs=1e-5)
    assert math.isfinite(rep["worst_module_error"]) and rep["worst_module_error"] > 0


def test_bad_arguments(tmp_path):
    lora_zoo.require()
    with pytest.raises(ValueError, match="method"):
        merge(lora_zoo.zoo_paths(), tmp_path / "x", method="average")
    with pytest.raises(ValueError, match="weights"):
        merge(lora_zoo.zoo_paths(), tmp_path / "x", method="task_arithmetic", weights=[1.0])
    with pytest.raises(ValueError, match="drop"):
        merge(lora_zoo.zoo_paths(), tmp_path / "x", method="dare", drop=1.0)
