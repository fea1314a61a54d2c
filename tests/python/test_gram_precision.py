"""The precision of the analysis Grams (docs/analysis.md, "Precision of the Grams").

"auto" takes float32 GEMMs (at most 448 columns each, summed in float64) for 16-bit inputs and
float64 otherwise; for LoRA deltas it falls back to float64 when centring would amplify the float32
error past 1/16 of the factors' rounding. Every result is checked against a float64 reference of the
same inputs, with the bound the report states: every eigenvalue within relative_error_bound ×
trace (Weyl), the Gram itself in spectral norm likewise.
"""
import json

import pytest
import torch

import unisub
from unisub import LoraDeltaAccumulator, SubspaceAccumulator

U32 = 2.0 ** -24


def reference_grams(models):
    """Centred mode Grams in float64 of the models exactly as stored."""
    X = torch.stack([m.double() for m in models])
    D = X - X.mean(0)
    out = torch.einsum("bij,bkj->ik", D, D)
    inn = torch.einsum("bji,bjk->ik", D, D)
    return {"out": out, "in": inn}


def stack(seed, count, m, n, dtype, offset=0.0, decay=None):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, n, generator=g, dtype=torch.float64) * offset
    models = []
    for _ in range(count):
        x = torch.randn(m, n, generator=g, dtype=torch.float64)
        if decay is not None:  # ill-conditioned: singular values spread over `decay` decades
            U, _, V = torch.linalg.svd(x, full_matrices=False)
            x = U @ torch.diag(torch.logspace(0, -decay, min(m, n), dtype=torch.float64)) @ V
        models.append((base + x).to(dtype))
    return models


def check_within_bound(acc, ref, bound):
    for mode, G in acc.grams.items():
        R = ref[mode]
        tr = R.trace().item()
        assert torch.equal(G, G.T), "the Gram must be exactly symmetric"
        err = torch.linalg.matrix_norm(G - R, ord=2).item()
        assert err <= bound * tr, (mode, err / tr, bound)
        ev, evr = torch.linalg.eigvalsh(G), torch.linalg.eigvalsh(R)
        assert (ev - evr).abs().max().item() <= bound * tr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset,decay", [(0.0, None), (300.0, None), (0.0, 6)])
def test_auto_uses_float32_for_16_bit_inputs_within_the_stated_bound(dtype, offset, decay):
    # offset: a common part 300x each model's own (centring happens before the float32 GEMMs, so it
    # costs nothing); decay: ill-conditioned models, singular values over six decades
    models = stack(1, 37, 48, 520, dtype, offset, decay)  # "in" has 48·b rows: several 448-column GEMMs
    acc = SubspaceAccumulator((48, 520), ("out", "in"), gram_precision="auto")
    for i in range(0, len(models), 6):
        acc.update(models[i:i + 6])
    # the last batch (one model: 48 columns of "in") is too thin for float32 GEMMs
    assert acc.precision["gemm"] == "float32+float64" and acc.precision["float32_models"] == 36
    acc = SubspaceAccumulator((48, 520), ("out", "in"), gram_precision="auto")
    for i in range(0, 36, 6):
        acc.update(models[i:i + 6])
    acc.update(models[30:37])
    p = acc.precision
    models = models[:36] + models[30:37]
    assert p["gemm"] == "float32" and p["float32_models"] == 43 and p["rule"] == "auto"
    ref = reference_grams(models)
    # the bound: (448 + 2)·u32 of Σ‖x − μ₀‖² (μ₀ the first batch's mean), relative to the centred trace
    X = torch.stack([m.double() for m in models])
    shifted = (X - X[:6].mean(0)).square().sum().item()
    assert p["relative_error_bound"] == pytest.approx(450 * U32 * shifted / ref["out"].trace().item(), rel=1e-4)
    # the promise of "auto": under 1/16 of what rounding to float16 can do (2·u16 of the trace)
    assert p["relative_error_bound"] <= p["tolerance"] == 2.0 ** -11 / 8
    check_within_bound(acc, ref, p["relative_error_bound"])


def test_auto_keeps_float64_for_float32_inputs():
    models = stack(2, 20, 40, 33, torch.float32, offset=100.0)
    acc = SubspaceAccumulator((40, 33), ("out", "in"), gram_precision="auto")
    acc.update(models[:7]).update(models[7:])
    p = acc.precision
    assert p["gemm"] == "float64" and p["float32_models"] == 0 and p["relative_error_bound"] == 0
    assert "tolerance" not in p
    ref = reference_grams(models)
    for mode, G in acc.grams.items():
        # float64 throughout: rounding of float64 sums only
        assert (G - ref[mode]).abs().max().item() <= 1e-12 * ref[mode].abs().max().item()


def test_forced_float32_on_float32_inputs_and_mixed_batches_are_reported():
    models = stack(3, 12, 30, 900, torch.float32)
    acc = SubspaceAccumulator((30, 900), ("out",), gram_precision="float32")
    acc.update(models)
    assert acc.precision["gemm"] == "float32"
    check_within_bound(acc, reference_grams(models), acc.precision["relative_error_bound"])
    mixed = SubspaceAccumulator((30, 900), ("out",), gram_precision="auto")
    mixed.update([m.half() for m in models[:9]]).update(models[9:])
    assert mixed.precision["gemm"] == "float32+float64" and mixed.precision["float32_models"] == 9


def test_default_is_float64_and_bad_names_are_refused():
    acc = SubspaceAccumulator((4, 5))
    acc.update(stack(4, 3, 4, 5, torch.float16))
    assert acc.precision["gemm"] == "float64"
    with pytest.raises(ValueError, match="gram_precision"):
        SubspaceAccumulator((4, 5), gram_precision="float16")
    with pytest.raises(ValueError, match="gram_precision"):
        LoraDeltaAccumulator((4, 5), gram_precision="half")


def test_float32_count_survives_state_dict_and_merge():
    models = stack(5, 10, 72, 80, torch.float16)
    a = SubspaceAccumulator((72, 80), gram_precision="auto").update(models[:4])
    b = SubspaceAccumulator.from_state_dict(a.state_dict())
    assert b.precision["float32_models"] == 4
    b.update([m.float() for m in models[4:]])
    assert b.precision["gemm"] == "float32+float64" and b.count == 10
    # merging reads the other's folded Grams while this one changes: itself is refused, not misread
    with pytest.raises(ValueError, match="into itself"):
        b.merge(b)


@pytest.mark.parametrize("center", [True, False])
def test_state_dict_then_more_batches_keeps_mean_and_gram(center):
    """A loaded accumulator's shift is the mean so far: later batches must add to it, centred or not."""
    models = stack(9, 12, 20, 30, torch.float64, offset=5.0)
    a = SubspaceAccumulator((20, 30), center=center).update(models[:5])
    b = SubspaceAccumulator.from_state_dict(a.state_dict()).update(models[5:9])
    b.merge(SubspaceAccumulator((20, 30), center=center).update(models[9:]))
    X = torch.stack(models)
    torch.testing.assert_close(b.mean, X.mean(0), rtol=1e-12, atol=1e-12)
    D = X - X.mean(0) if center else X
    torch.testing.assert_close(b.grams["out"], torch.einsum("bij,bkj->ik", D, D), rtol=1e-11, atol=1e-9)


def lora_factors(seed, M, m, n, r, dtype, shared=0.0):
    """M adapters; `shared` scales a delta common to all (fine-tunes of one base share one)."""
    g = torch.Generator().manual_seed(seed)
    Bs = torch.randn(m, r, generator=g, dtype=torch.float64)
    As = torch.randn(r, n, generator=g, dtype=torch.float64)
    out = []
    for _ in range(M):
        B = torch.randn(m, r, generator=g, dtype=torch.float64) / m ** 0.5
        A = torch.randn(r, n, generator=g, dtype=torch.float64) / n ** 0.5
        # ΔW_i = shared·Bs·As + B·A as one rank-2r product
        out.append((torch.cat([shared * Bs / m ** 0.5, B], 1).to(dtype), torch.cat([As / n ** 0.5, A], 0).to(dtype)))
    return out


def reference_centred_spectrum(factors, scalings):
    W = torch.stack([s * B.double() @ A.double() for (B, A), s in zip(factors, scalings)]).flatten(1)
    W = W - W.mean(0)
    K = W @ W.T
    return torch.linalg.eigvalsh(K).flip(0), K.trace().item()


def test_delta_auto_float32_for_independent_16_bit_adapters():
    factors = lora_factors(6, 40, 96, 80, 8, torch.float16)
    scalings = [2.0] * 20 + [0.5] * 20
    acc = LoraDeltaAccumulator((96, 80), gram_precision="auto")
    for i, ((B, A), s) in enumerate(zip(factors, scalings)):
        acc.add(B, A, s, id=i)
    Kc = acc.gram(center=True)
    p = acc.precision
    assert p["gemm"] == "float32", p
    assert p["estimated_relative_error"] <= p["tolerance"] == 2.0 ** -11 / 8
    ev = torch.linalg.eigvalsh(Kc).flip(0)
    ref, tr = reference_centred_spectrum(factors, scalings)
    # the estimate is what the report promises for every centred eigenvalue
    assert (ev - ref).abs().max().item() <= p["estimated_relative_error"] * tr
    # and the diagonal is exact: K_ii = ‖s_i B_i A_i‖² from float64 factors
    K = acc.gram(center=False)
    exact = torch.stack([(s * B.double() @ A.double()).square().sum() for (B, A), s in zip(factors, scalings)])
    torch.testing.assert_close(K.diagonal(), exact, rtol=1e-13, atol=0)


def test_delta_float32_kernel_says_which_tiles_ran():
    # float16 factors of even widths take AMX tiles where the CPU has them, else the BLAS; odd widths
    # and factors lora_gram first scales past 2^30 (then float32) always take the BLAS: the entry
    # must name the kernel that ran, not the one the store's dtype suggests
    def kernel(factors, shape):
        acc = LoraDeltaAccumulator(shape, gram_precision="float32")
        for i, (B, A) in enumerate(factors):
            acc.add(B, A, 1.0, id=i)
        acc.gram(center=True)
        return acc.precision["float32_kernel"]

    even = lora_factors(9, 12, 96, 80, 8, torch.float16)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    expected = "amx_bfloat16_split" if amx is not None and amx() else "blas"
    assert kernel(even, (96, 80)) == (expected if amx is not None else kernel(even, (96, 80)))
    assert kernel(lora_factors(9, 12, 95, 81, 8, torch.float16), (95, 81)) == "blas"
    huge = [(B * 2.0 ** 40, A) for B, A in lora_factors(9, 12, 96, 80, 8, torch.bfloat16)]
    assert kernel(huge, (96, 80)) == "blas"
    # the tile kernel is libunisub's own: oneDNN switched off changes nothing
    before = kernel(even, (96, 80))
    with torch.backends.mkldnn.flags(enabled=False):
        assert kernel(even, (96, 80)) == before


def test_delta_auto_falls_back_to_float64_when_centring_cancels():
    # a common delta 3000x each adapter's own: float32 GEMMs then centring would lose the spectrum
    factors = lora_factors(7, 24, 64, 72, 4, torch.float16, shared=3000.0)
    auto = LoraDeltaAccumulator((64, 72), gram_precision="auto")
    exact = LoraDeltaAccumulator((64, 72), gram_precision="float64")
    for i, (B, A) in enumerate(factors):
        auto.add(B, A, 1.0, id=i)
        exact.add(B, A, 1.0, id=i)
    Kc = auto.gram(center=True)
    p = auto.precision
    assert p["gemm"] == "float64" and p["estimated_relative_error"] > p["tolerance"], p
    assert torch.equal(Kc, exact.gram(center=True))
    ref, tr = reference_centred_spectrum(factors, [1.0] * 24)
    ev = torch.linalg.eigvalsh(Kc).flip(0)
    # float64 centring of K keeps its rounding relative to the uncentred trace (3000² larger)
    assert (ev - ref).abs().max().item() <= 1e-14 * exact.gram(center=False).trace().item()


def test_delta_float32_inputs_stay_float64():
    factors = lora_factors(8, 10, 32, 40, 4, torch.float32)
    acc = LoraDeltaAccumulator((32, 40), gram_precision="auto")
    for i, (B, A) in enumerate(factors):
        acc.add(B, A, 1.0, id=i)
    acc.gram(center=True)
    assert acc.precision["gemm"] == "float64" and "estimated_relative_error" not in acc.precision


def write_zoo(folder, dtype, count=8):
    from unisub.io import save_file

    folder.mkdir()
    g = torch.Generator().manual_seed(11)
    for i in range(count):
        # batches of 4 give each half 2 models: 2·144 >= 256 columns, enough for float32 GEMMs
        save_file({"enc.w": torch.randn(160, 200, generator=g).to(dtype),
                   "enc.v": torch.randn(144, 144, generator=g).to(dtype)}, folder / f"m{i}.safetensors")
    return folder


def test_analyze_reports_the_precision_of_every_slot(tmp_path):
    zoo = write_zoo(tmp_path / "zoo", torch.float16)
    auto = unisub.analyze(zoo, out=tmp_path / "auto", plots=False, progress=False, batch_size=4)
    exact = unisub.analyze(zoo, out=tmp_path / "exact", plots=False, progress=False, batch_size=4,
                           gram_precision="float64")
    assert auto.report["options"]["gram_precision"] == "auto"
    for slot, entry in auto.report["slots"].items():
        gram = entry["gram"]
        assert gram["gemm"] == "float32" and gram["float32_models"] == 8
        other = exact.report["slots"][slot]
        assert other["gram"]["gemm"] == "float64"
        for mode, rep in entry["modes"].items():
            a = torch.tensor(rep["singular_values"], dtype=torch.float64).square()
            b = torch.tensor(other["modes"][mode]["singular_values"], dtype=torch.float64).square()
            assert (a - b).abs().max().item() <= gram["relative_error_bound"] * b.sum().item()
    saved = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert saved["slots"]["enc.w"]["gram"] == auto.report["slots"]["enc.w"]["gram"]
    with pytest.raises(ValueError, match="gram_precision"):
        unisub.analyze(zoo, plots=False, progress=False, gram_precision="bf16")
