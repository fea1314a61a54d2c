"""SubspaceAccumulator against a float64 dense reference, and its merge / all_reduce / resume
paths against the one-shot result."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

import unisub
from unisub import SubspaceAccumulator

EPS64 = torch.finfo(torch.float64).eps


def dense_grams(X):
    X = X.double()
    D = X - X.mean(0)
    return {"out": torch.einsum("bij,bkj->ik", D, D), "in": torch.einsum("bji,bjk->ik", D, D)}, X.mean(0)


def _bound(X):
    # the input's own rounding carried by the mean and the deviations, times the Gram's width
    scale = X.double().abs().max().item()
    dev = (X.double() - X.double().mean(0)).abs().max().item()
    return 8 * X.shape[0] * max(X.shape[1:]) * EPS64 * scale * max(dev, 1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3, 50])
def test_matches_dense_reference_with_large_offset(dtype, batch, gen):
    X = (1e4 + torch.randn(23, 7, 5, generator=gen, dtype=torch.float64)).to(dtype)
    acc = SubspaceAccumulator(modes=("out", "in"))
    for i in range(0, 23, batch):
        acc.update(X[i:i + batch])
    ref, mean = dense_grams(X)
    assert acc.count == 23
    assert (acc.mean - mean).abs().max() <= 4 * 23 * EPS64 * 1e4
    for m in ("out", "in"):
        err = (acc.grams[m] - ref[m]).abs().max().item()
        assert err <= _bound(X), f"{m}: {err:.3e} > {_bound(X):.3e}"
        # relative to the centred energy, not the offset: the offset must not leak in
        assert err <= 1e-9 * ref[m].abs().max().item()


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_mode_grams_repeat_bit_for_bit_and_meet_their_bound_on_any_thread_count(precision, gen):
    """Two runs on two threads give the same bits (what resume and the front ends' identical folders
    rely on), after torch.set_num_threads has turned MKL's dynamic threading off; one thread or two
    agree with the float64 reference to the float32 route's stated bound, (kFloat32Columns + 2)·u32
    of Σ‖x − μ₀‖² (4× for the shift), or to 1e-12 in float64."""
    X = [(torch.randn(520, 300, generator=gen) * 0.1).to(torch.float16) for _ in range(12)]
    threads = torch.get_num_threads()
    grams = []
    try:
        for n in (2, 2, 1):
            torch.set_num_threads(n)
            acc = SubspaceAccumulator((520, 300), ["out", "in"], True, None, precision)
            for b in range(0, 12, 4):
                acc.update(X[b:b + 4])
            grams.append(acc.grams)
    finally:
        torch.set_num_threads(threads)
    D = torch.stack([x.double() for x in X])
    D = D - D.mean(0)
    energy = D.pow(2).sum().item()
    for mode, ref in (("out", torch.einsum("mij,mkj->ik", D, D)), ("in", torch.einsum("mji,mjk->ik", D, D))):
        assert torch.equal(grams[0][mode], grams[1][mode]), mode
        bound = (448 + 2) * 2.0 ** -24 * 4 * energy if precision == "float32" else 1e-12 * energy
        for g in (grams[0], grams[2]):
            assert (g[mode] - ref).abs().max().item() <= bound, mode


def test_uncentred_mode_and_validation(gen):
    X = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    acc = SubspaceAccumulator(modes=("out",), center=False).update(X[:2]).update(X[2:])
    torch.testing.assert_close(acc.grams["out"], torch.einsum("bij,bkj->ik", X, X), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"expected models of shape \[4, 3\], got \[3, 4\]"):
        acc.update(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="modes must be"):
        SubspaceAccumulator(modes=("model",))
    with pytest.raises(TypeError, match="floating point"):
        acc.update(torch.zeros(1, 4, 3, dtype=torch.int32))


def test_non_finite_models_are_rejected_before_the_accumulator_changes(gen):
    # A NaN or infinity used to reach the Grams and fail only at finalize, as an eigensolver
    # "failed to converge" that named neither the model nor the input.
    X = torch.randn(5, 4, 3, generator=gen, dtype=torch.float64)
    acc = SubspaceAccumulator().update(X[:3])
    for bad in (float("nan"), float("inf")):
        Y = X[3:].clone()
        Y[1, 2, 0] = bad
        with pytest.raises(ValueError, match=r"model 1 of the batch holds NaN or infinity"):
            acc.update(Y)
        with pytest.raises(ValueError, match=r"model 1 of the batch holds NaN or infinity"):
            acc.update(list(Y))
    assert acc.count == 3
    torch.testing.assert_close(acc.grams["out"], SubspaceAccumulator().update(X[:3]).grams["out"], rtol=0, atol=0)


def test_load_state_dict_rejects_tensors_of_the_wrong_shape(gen):
    # a [1, n] mean used to be broadcast into the [m, n] buffer silently
    state = SubspaceAccumulator().update(torch.randn(3, 4, 5, generator=gen)).state_dict()
    for key, bad in (("mean", torch.zeros(1, 5)), ("gram.in", torch.zeros(4, 4)), ("gram.out", None)):
        with pytest.raises(ValueError, match=rf"state\['{key}'\] must be a tensor of shape"):
            SubspaceAccumulator.from_state_dict(dict(state, **{key: bad}))


def test_merge_in_any_grouping_equals_one_pass(gen):
    X = torch.randn(17, 6, 4, generator=gen, dtype=torch.float64) + 3
    whole = SubspaceAccumulator().update(X)
    parts = [SubspaceAccumulator().update(X[a:b]) for a, b in [(0, 5), (5, 6), (6, 17)]]
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert merged.count == 17
    for m in ("out", "in"):
        torch.testing.assert_close(merged.grams[m], whole.grams[m], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-14, atol=1e-14)


def test_state_dict_weights_only_round_trip_and_resume(tmp_path, gen):
    X = torch.randn(12, 5, 6, generator=gen)
    straight = SubspaceAccumulator((5, 6))
    for i in range(0, 12, 4):
        straight.update(X[i:i + 4])
    first = SubspaceAccumulator((5, 6)).update(X[:4])
    torch.save(first.state_dict(), tmp_path / "s.pt")
    resumed = SubspaceAccumulator.from_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    resumed.update(X[4:8]).update(X[8:])
    for m in ("out", "in"):
        assert torch.equal(resumed.grams[m], straight.grams[m]), "resuming must be bit-identical"
    assert torch.equal(resumed.mean, straight.mean)


def test_finalize_rank_energy_and_spectrum(gen):
    # a stack with an exact rank-2 mode-out structure plus nothing else
    U = torch.linalg.qr(torch.randn(8, 2, generator=gen, dtype=torch.float64)).Q
    X = torch.einsum("ik,bkj->bij", U, torch.randn(30, 2, 5, generator=gen, dtype=torch.float64))
    acc = SubspaceAccumulator(modes=("out",)).update(X)
    s = acc.finalize(energy=0.999)
    assert s.rank("out") == 2
    P = s.bases["out"] @ s.bases["out"].T
    torch.testing.assert_close(P, U @ U.T, rtol=0, atol=1e-10)
    assert acc.finalize(rank=1).rank("out") == 1
    assert acc.finalize().rank("out") == 8
    ref = torch.linalg.svdvals(torch.cat(list(X - X.mean(0)), dim=1))
    sv = s.singular_values("out")
    torch.testing.assert_close(sv[:2], ref[:2], rtol=1e-12, atol=0)
    # through the Gram, values below √ε·σ_max are rounding noise (DESIGN.md §3)
    assert sv[2:].max() <= 4 * EPS64 ** 0.5 * sv[0]
    with pytest.raises(ValueError, match="energy must lie in"):
        acc.finalize(energy=1.5)


def _worker(rank, world, init, X, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    acc = SubspaceAccumulator((X.shape[1], X.shape[2]))
    mine = X[:4] if rank == 0 else X[4:]
    for i in range(0, mine.shape[0], 3):
        acc.update(mine[i:i + 3])
    acc.all_reduce()
    torch.save((rank, acc.count, acc.mean, acc.grams["out"], acc.grams["in"]), f"{out}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_two_gloo_processes(tmp_path, gen):
    X = torch.randn(10, 4, 6, generator=gen, dtype=torch.float64) + 100
    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_worker, args=(r, 2, init, X, tmp_path / "res")) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    results = [torch.load(f"{tmp_path / 'res'}.{r}", weights_only=True) for r in range(2)]
    one = SubspaceAccumulator((4, 6)).update(X)
    for rank, count, mean, gout, gin in results:
        assert count == 10
        torch.testing.assert_close(mean, one.mean, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(gout, one.grams["out"], rtol=1e-11, atol=1e-9)
        torch.testing.assert_close(gin, one.grams["in"], rtol=1e-11, atol=1e-9)


# ---- mode 0 of LoRA deltas: LoraDeltaAccumulator (lora_gram, never forming ΔW) ----

from unisub.accumulator import LoraDeltaAccumulator  # noqa: E402
from unisub.metrics import principal_angles  # noqa: E402


def _lora_models(gen, M=11, m=9, n=7, ranks=(1, 2, 3, 4), dtype=torch.float32):
    """M models with LoRA ranks cycling through ``ranks``, a shared component (so the spectrum is
    not flat) and a large common offset in B (so centring matters), and per-model scalings."""
    B0 = torch.randn(m, max(ranks), generator=gen, dtype=torch.float64)
    A0 = torch.randn(max(ranks), n, generator=gen, dtype=torch.float64)
    out = []
    for i in range(M):
        r = ranks[i % len(ranks)]
        B = (3 * B0[:, :r] + torch.randn(m, r, generator=gen, dtype=torch.float64)).to(dtype)
        A = (A0[:r] + 0.5 * torch.randn(r, n, generator=gen, dtype=torch.float64)).to(dtype)
        out.append((B, A, float(torch.rand((), generator=gen, dtype=torch.float64)) * 4 + 0.25))
    return out


def dense_delta(models, center=True):
    """The reference: form every ΔW_i = s_i B_i A_i in float64, stack, centre, Gram, eigh."""
    W = torch.stack([s * B.double() @ A.double() for B, A, s in models])
    X = W.reshape(W.shape[0], -1)
    D = X - X.mean(0) if center else X
    K = D @ D.T
    ev, V = torch.linalg.eigh(K)
    return K, ev.flip(0).clamp_min(0), V.flip(1), D


def check_spectrum(ev, ev_ref, V, V_ref, k):
    """Eigenvalues: relative 1e-10 (float64) for every eigenvalue above 1e-4·λ_max, 1e-10·λ_max for
    the rest (the centred Gram's exact zero); spans of the leading k eigenvectors: principal
    angles with sin θ ≤ 1e-10 / relative eigengap."""
    lmax = ev_ref[0].item()
    big = ev_ref > 1e-4 * lmax
    assert ((ev - ev_ref).abs()[big] <= 1e-10 * ev_ref[big]).all(), (ev, ev_ref)
    assert (ev - ev_ref).abs().max() <= 1e-10 * lmax
    gap = (ev_ref[k - 1] - ev_ref[k]).item() / lmax
    theta = principal_angles(V[:, :k], V_ref[:, :k])
    assert theta.sin().max() <= 1e-10 / gap, (theta, gap)


@pytest.mark.parametrize("center", [True, False])
def test_lora_delta_matches_dense_reference_mixed_ranks(center, gen):
    models = _lora_models(gen)
    acc = LoraDeltaAccumulator(center=center)
    for B, A, s in models:
        acc.add(B, A, s)
    K_ref, ev_ref, V_ref, _ = dense_delta(models, center)
    K = acc.gram()
    assert K.dtype == torch.float64 and K.shape == (11, 11)
    assert (K - K_ref).abs().max() <= 1e-12 * K_ref.abs().max()
    ev, V = acc.eigh()
    check_spectrum(ev, ev_ref, V, V_ref, k=3)
    if center:
        # the centring is lora_gram's own: the op with center=True on the scaled factors agrees
        Bs, As = acc.factors()
        torch.testing.assert_close(K, unisub.lora_gram(Bs, As, center=True), rtol=0, atol=1e-13 * K.abs().max().item())


def test_lora_delta_store_grows_widens_and_reorders(gen):
    # The accumulator keeps every model's factors in one store per factor, model i in row i: it must
    # grow past what was reserved, widen for a larger rank or a wider dtype (16-bit factors cast
    # exactly), come back in id order after sort_by_id and a merge, and still give the dense K; each
    # model's B() / A() must be its factors as given, and the precision rule must see the dtypes as
    # given (a float32 model among float16 ones takes the auto rule off the float32 GEMMs).
    dtypes = [torch.float16, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float16]
    ranks = [3, 8, 2, 8, 5, 1]
    ids = [5, 1, 9, 0, 3, 7]
    models = []
    for dt, r in zip(dtypes, ranks):
        B = torch.randn(9, r, generator=gen).to(dt)
        A = torch.randn(r, 7, generator=gen).to(dt)
        models.append((B, A, float(torch.rand((), generator=gen)) + 0.5))
    first = torch.classes.unisub.DeltaAccumulator(9, 7, True, "cpu")
    first.reserve(2)
    for (B, A, s), i in zip(models[:4], ids[:4]):
        first.add(B, A, s, i)
    second = torch.classes.unisub.DeltaAccumulator(9, 7, True, "cpu")
    for (B, A, s), i in zip(models[4:], ids[4:]):
        second.add(B, A, s, i)
    first.merge(second)
    assert first.ranks() == ranks and first.ids() == ids
    for (B, A, _), Bs, As in zip(models, first.B(), first.A()):  # as given, dtype included
        assert Bs.dtype == B.dtype and torch.equal(Bs, B) and torch.equal(As, A)
    # they are copies: changing them leaves the accumulator as it was
    for t in first.B() + first.A():
        t.zero_()
    for (B, A, _), Bs, As in zip(models, first.B(), first.A()):
        assert torch.equal(Bs, B) and torch.equal(As, A)
    first.sort_by_id()
    order = sorted(range(len(ids)), key=lambda k: ids[k])
    assert first.ids() == sorted(ids) and first.ranks() == [ranks[k] for k in order]
    ordered = [models[k] for k in order]
    for (B, A, _), Bs, As in zip(ordered, first.B(), first.A()):
        assert Bs.dtype == B.dtype and torch.equal(Bs, B) and torch.equal(As, A)
    for center in (True, False):
        K_ref = dense_delta(ordered, center)[0]
        assert (first.gram(center) - K_ref).abs().max() <= 1e-12 * K_ref.abs().max()
    Bf, Af = first.factors()  # s folded in, zero-padded to rank 8
    W = torch.einsum("imr,irn->imn", Bf, Af)
    torch.testing.assert_close(W, torch.stack([s * B.double() @ A.double() for B, A, s in ordered]), rtol=1e-14, atol=0)
    # mixed dtypes: auto keeps float64 GEMMs (not every factor is 16-bit)
    first.set_gram_precision("auto")
    first.gram(True)
    assert json.loads(first.precision_json())["gemm"] == "float64"


def test_lora_delta_reserve_before_and_after_the_first_model(gen):
    models = _lora_models(gen, M=7)
    K_ref = dense_delta(models)[0]
    for when in ("before", "after"):
        acc = LoraDeltaAccumulator()
        if when == "before":
            acc.reserve(3)  # the shape is not known yet: applied when the first model comes
        for k, (B, A, s) in enumerate(models):
            acc.add(B, A, s)
            if when == "after" and k == 0:
                acc.reserve(len(models))
        assert (acc.gram() - K_ref).abs().max() <= 1e-12 * K_ref.abs().max()
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="reserve"):
            acc.reserve(bad)


def test_lora_delta_finalize_scores_and_eigen_weights(gen):
    models = _lora_models(gen, M=10)
    acc = LoraDeltaAccumulator()
    for i, (B, A, s) in enumerate(models):
        acc.add(B, A, s, id=i)
    _, ev_ref, V_ref, D = dense_delta(models)
    sub = acc.finalize(energy=0.95, eigen_weights=3)
    r = sub.rank()
    assert r >= 3 and r == int((ev_ref.cumsum(0) / ev_ref.sum() >= 0.95 * (1 - 8 * EPS64)).nonzero()[0]) + 1
    # reference eigen-weights E_k = Dᵀ v_k / σ_k (unit Frobenius norm), as dense m·n vectors
    E_ref = D.T @ V_ref[:, :3] / ev_ref[:3].sqrt()
    E = sub.eigen_weights.reshape(3, -1).T
    torch.testing.assert_close(E.T @ E, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-10)
    gap = (ev_ref[2] - ev_ref[3]).item() / ev_ref[0].item()
    assert principal_angles(E, E_ref).sin().max() <= 1e-10 / gap
    # scores are each centred model's coordinates on the eigen-weights: D E = V Σ
    torch.testing.assert_close(sub.scores()[:, :3], D @ E, rtol=0, atol=1e-9 * ev_ref[0].sqrt().item())
    W = torch.stack([s * B.double() @ A.double() for B, A, s in models])
    torch.testing.assert_close(sub.mean, W.mean(0), rtol=0, atol=1e-13 * W.abs().max().item())
    assert acc.finalize(rank=2).eigen_weights is None, "eigen-weights only when asked"


def test_lora_delta_release_factors_keeps_the_result_and_refuses_the_factors(gen):
    """What the job does (finalize_slot(release_factors=True)): the factor store is freed before
    the report, and the finished slot is the same, bit for bit, as with the factors kept; eigen-
    weights (which read the factors) are formed before the release."""
    models = _lora_models(gen, M=9)

    def filled():
        acc = LoraDeltaAccumulator()
        for i, (B, A, s) in reversed(list(enumerate(models))):  # finalize sorts by id first
            acc.add(B, A, s, id=i)
        return acc

    kept, released = filled(), filled()
    args = ("slot", None, 0.9, 2, 3, {"factors": ["a", "b"]})
    entry_k, tensors_k, meta_k = kept.finalize_slot(*args)
    entry_r, tensors_r, meta_r = released.finalize_slot(*args, release_factors=True)
    assert entry_k == entry_r and meta_k == meta_r and tensors_k.keys() == tensors_r.keys()
    for name in tensors_k:
        assert torch.equal(tensors_k[name], tensors_r[name]), name
    assert len(kept.B) == 9, "without release_factors the factors stay"
    assert released._impl.factors_released()
    assert released.ids == list(range(9)) and released.ranks == kept.ranks
    assert torch.equal(released.gram(False), kept.gram(False))
    for use in (lambda: released.B, lambda: released.A, lambda: released.state_dict(),
                lambda: released.add(*models[0][:2], id=99), lambda: released.eigen_weights(torch.ones(9, 1)),
                lambda: LoraDeltaAccumulator().merge(released)):
        with pytest.raises(ValueError, match="factors were released"):
            use()
    again = released.finalize(rank=2)  # K alone suffices for a finished slot without eigen-weights
    assert torch.equal(again.eigenvalues, tensors_k["eigenvalues"])
    assert LoraDeltaAccumulator().release_factors().count == 0  # nothing added: nothing to free


def test_lora_delta_merge_state_dict_and_errors(tmp_path, gen):
    models = _lora_models(gen, M=9)
    whole = LoraDeltaAccumulator()
    for i, (B, A, s) in enumerate(models):
        whole.add(B, A, s, id=i)
    parts = [LoraDeltaAccumulator(), LoraDeltaAccumulator()]
    for i, (B, A, s) in enumerate(models):
        parts[i % 2].add(B, A, s, id=i)  # interleaved, like analyze's sharding
    torch.save(parts[1].state_dict(), tmp_path / "p.pt")
    p1 = LoraDeltaAccumulator.from_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    merged = parts[0].merge(p1).sort_by_id()
    assert merged.ids == list(range(9))
    # the cross blocks between the parts are in K: bit-identical to the one-pass Gram
    assert torch.equal(merged.gram(), whole.gram())
    with pytest.raises(ValueError, match=r"model ids \[0\] are in both"):
        LoraDeltaAccumulator().add(*models[0][:2], id=0).merge(LoraDeltaAccumulator().add(*models[1][:2], id=0))
    acc = LoraDeltaAccumulator()
    with pytest.raises(ValueError, match="rank must agree"):
        acc.add(torch.zeros(4, 2), torch.zeros(3, 5))
    acc.add(torch.zeros(4, 2), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"expected ΔW of shape \[4, 5\]"):
        acc.add(torch.zeros(4, 2), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="LoraDeltaAccumulator"):
        SubspaceAccumulator(modes=("delta",))


def _delta_worker(rank, world, init, models, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    acc = LoraDeltaAccumulator()
    for i, (B, A, s) in enumerate(models):
        if i % world == rank:
            acc.add(B, A, s, id=i)
    acc.all_reduce()
    torch.save((acc.ids, acc.gram(), acc.eigh()[0]), f"{out}.{rank}")
    dist.destroy_process_group()


def test_lora_delta_all_reduce_two_gloo_processes(tmp_path, gen):
    models = _lora_models(gen, M=7)
    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_delta_worker, args=(r, 2, init, models, tmp_path / "res")) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    one = LoraDeltaAccumulator()
    for i, (B, A, s) in enumerate(models):
        one.add(B, A, s, id=i)
    for r in range(2):
        ids, K, ev = torch.load(f"{tmp_path / 'res'}.{r}", weights_only=True)
        assert ids == list(range(7)), "models in id order on every rank"
        assert torch.equal(K, one.gram()), "the gathered K equals the one-process K bit for bit"


def test_update_leaves_the_callers_models_untouched(gen):
    """float64 models on the accumulator's device are not copied by .to(): centring must not
    write into them."""
    X = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64) + 3
    before = X.clone()
    SubspaceAccumulator().update(X)
    assert torch.equal(X, before)


def test_a_list_equals_a_stacked_batch_and_buffers_are_reused(gen):
    # libunisub's accumulator keeps its float64 update buffers between batches (nothing slot-sized
    # is allocated per batch): a list and a stacked batch must still give the same bits.
    X = torch.randn(9, 6, 4, generator=gen).half()
    plain, reused = SubspaceAccumulator(), SubspaceAccumulator((6, 4))
    for i in range(0, 9, 4):
        plain.update(X[i:i + 4])
        reused.update(list(X[i:i + 4]))
    assert plain.count == reused.count == 9
    assert torch.equal(plain.mean, reused.mean)
    for m in ("out", "in"):
        assert torch.equal(plain.grams[m], reused.grams[m])
    with pytest.raises(ValueError, match=r"expected models of shape \[6, 4\], got \[4, 6\]"):
        reused.update([torch.zeros(6, 4), torch.zeros(4, 6)])
    assert reused.count == 9, "a refused batch changes nothing"


def test_lora_delta_add_rejects_a_duplicate_id(gen):
    acc = LoraDeltaAccumulator().add(torch.randn(5, 2, generator=gen), torch.randn(2, 4, generator=gen), id=7)
    with pytest.raises(ValueError, match="model id 7 is already in this accumulator"):
        acc.add(torch.randn(5, 2, generator=gen), torch.randn(2, 4, generator=gen), id=7)
    assert acc.count == 1
