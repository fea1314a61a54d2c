"""Inputs that once crashed an op or silently gave a wrong answer (found by fuzzing the ops): each
must now give the right answer or a clear error. Cases that crashed the process run in a
subprocess, so that a regression fails this test instead of killing the test run."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import unisub


def _python(code, timeout=120):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("how", ["fake", "compile"])
def test_all_finite_cannot_be_traced_and_says_so(how):
    # a catch-all kernel was decomposed under FakeTensorMode and read a fake tensor's data: SIGSEGV
    code = {
        "fake": """
            import torch, unisub
            from torch._subclasses.fake_tensor import FakeTensorMode
            with FakeTensorMode():
                torch.ops.unisub.all_finite(torch.randn(5))
        """,
        "compile": """
            import torch, unisub
            torch.compile(lambda x: torch.ops.unisub.all_finite(x), fullgraph=True)(torch.randn(5))
        """,
    }[how]
    run = _python(code)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "all_finite reads values, so it cannot be traced" in run.stderr


def test_all_finite_reads_both_parts_of_complex_numbers():
    x = torch.zeros(4, dtype=torch.complex64)
    assert torch.ops.unisub.all_finite(x)
    x[2] = complex(0, float("nan"))
    assert not torch.ops.unisub.all_finite(x)
    assert not torch.ops.unisub.all_finite(torch.tensor([complex(float("inf"), 0)]).conj())


def test_all_finite_and_the_nulls_refuse_meta_tensors():
    meta = torch.empty(3, device="meta", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="meta tensor"):
        torch.ops.unisub.all_finite(meta)
    # these return CPU tensors: before, uninitialised memory
    with pytest.raises(RuntimeError, match="meta tensor"):
        torch.ops.unisub.null_model_variances(meta, True)
    with pytest.raises(RuntimeError, match="meta tensor"):
        torch.ops.unisub.norm_matched_null(meta, 4, True, 2, 0)


@pytest.mark.parametrize("text, needle", [
    ('{"stages": {"x": {"seconds": 1.0}}}', "stage 'x' has no number 'multiply_adds'"),
    ('{"stages": {"x": {"seconds": 1.0, "multiply_adds": 0, "bytes": 0}}}', "no number 'calls'"),
    ("not json", "not valid JSON"),
])
def test_profile_table_refuses_a_profile_with_missing_fields(text, needle):
    # an absent field was read through a null pointer: SIGSEGV (run apart, in case it comes back)
    run = _python(f"""
        import torch, unisub
        try:
            torch.ops.unisub.analysis_profile_table({text!r})
        except ValueError as e:
            print("refused:", e)
    """)
    assert run.returncode == 0, run.stderr[-2000:]
    assert needle in run.stdout


def test_profile_table_of_a_whole_profile_still_prints():
    text = json.dumps({"stages": {"gram": {"seconds": 2.0, "multiply_adds": 4e9, "bytes": 0, "calls": 3}},
                       "total_seconds": 4.0, "gemm_rate": {"float64": 1e10, "float32": 2e10}})
    table = torch.ops.unisub.analysis_profile_table(text)
    assert "2.00 Gmadd/s" in table and "50.0%" in table and "float64 10.00 Gmadd/s" in table


def test_in_place_ops_refuse_a_target_already_in_a_graph():
    # before: G's graph still described G = 2a, so a.grad came out 2 everywhere, with no warning
    a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    U = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]
    G = a * 2
    with pytest.raises(RuntimeError, match="project_: G requires grad"):
        unisub.project_(G, U, None)
    with pytest.raises(RuntimeError, match=r"project_list_: Gs\[0\] requires grad"):
        unisub.project_list_([G], [U], [None])
    with torch.no_grad():
        unisub.project_(G, U, None)
    torch.testing.assert_close(G, U @ (U.T @ (a.detach() * 2)))
    acc = torch.zeros(6, 6, dtype=torch.float64, requires_grad=True) * 1
    with pytest.raises(RuntimeError, match="gram_update_: G requires grad"):
        unisub.gram_update_(acc, torch.randn(2, 6, 4, dtype=torch.float64), 1)


def test_finalising_a_slot_with_one_accumulator_as_both_halves_is_refused():
    MA = torch.classes.unisub.ModeAccumulator
    a = MA(3, 4, ["out", "in"], True, "cpu")
    a.update([torch.randn(3, 4, dtype=torch.float64) for _ in range(4)])
    with pytest.raises(ValueError, match="the same accumulator"):  # it counted every model twice
        a.finalize_slot(a, "s", None, 0.9, 0, "{}", [0.9], [1])


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    run = _python(f"""
        import torch, unisub
        try:
            torch.classes.unisub.SafetensorsFile({str(fifo)!r})
        except Exception as e:
            print("refused:", e)
    """, timeout=60)
    assert "not a regular file" in run.stdout, (run.stdout, run.stderr[-2000:])


def test_discovery_does_not_follow_links_back_to_a_folder_it_searches(tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "sub").mkdir(parents=True)
    unisub.io.save_file({"w": torch.randn(2, 3)}, zoo / "sub" / "m0.safetensors")
    unisub.io.save_file({"w": torch.randn(2, 3)}, zoo / "m1.safetensors")
    os.symlink("..", zoo / "sub" / "up")      # a cycle
    os.symlink("/", zoo / "sub" / "root")     # the whole file system, as /proc/self/root
    os.symlink(zoo / "sub", tmp_path / "linked_sub")
    found, kinds = torch.ops.unisub.discover_sources([str(zoo)])
    assert [os.path.relpath(p, zoo) for p in found] == ["m1.safetensors", os.path.join("sub", "m0.safetensors")]
    # a link to a model folder elsewhere is still followed
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(tmp_path / "linked_sub", other / "models")
    found, _ = torch.ops.unisub.discover_sources([str(other)])
    assert [os.path.basename(p) for p in found] == ["m0.safetensors"]


@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1e170, 1e300])
def test_mode_svd_hosvd_and_explained_variance_at_the_ends_of_float64(scale, gen):
    # their Grams squared the entries: singular values of 0 at 1e-300, an eigh failure at 1e300,
    # NaN explained-variance ratios at both
    X0 = torch.randn(5, 4, 6, generator=gen, dtype=torch.float64)
    X = X0 * scale
    want = torch.linalg.svdvals(X0.permute(1, 0, 2).reshape(4, -1)) * scale  # reference: svd, no squares
    U, S = unisub.mode_svd(X, 1)
    torch.testing.assert_close(S / scale, want / scale, rtol=1e-12, atol=0)
    U0, _ = unisub.mode_svd(X0, 1)
    torch.testing.assert_close(U, U0, rtol=0, atol=1e-12)
    core, factors, _ = unisub.hosvd(X, [-1, 2, 3])
    core0, factors0, _ = unisub.hosvd(X0, [-1, 2, 3])
    torch.testing.assert_close(core / scale, core0, rtol=1e-10, atol=1e-12)
    ev = unisub.explained_variance(X, U0[:, :2], dim=1)
    torch.testing.assert_close(ev, unisub.explained_variance(X0, U0[:, :2], dim=1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["auto", "lapack", "jacobi", "gram"])
def test_svd_second_derivatives_are_exact_or_refused(method, gen):
    # the factors were saved as constants: gradgradcheck failed, and the 1/0 of repeated σ made
    # NaN second derivatives
    for shape in [(4, 3), (3, 5), (2, 4, 3)]:
        A = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda a: unisub.svd(a, method=method)[1], (A,))
        assert torch.autograd.gradgradcheck(lambda a: (lambda r: r[0] @ r[0].mT)(unisub.svd(a, method=method)), (A,))
    A = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="second derivatives .* of a truncated svd"):
        torch.autograd.grad(unisub.svd(A, 2)[1].sum(), A, create_graph=True)


def test_sorted_eigh_refuses_nan_and_infinity():
    # LAPACK returned numbers: an infinite entry gave eigenvalues [1, 1, 1]
    for bad in (float("inf"), float("nan")):
        G = torch.eye(3, dtype=torch.float64)
        G[0, 1] = G[1, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            torch.ops.unisub.sorted_eigh(G)


def test_fake_kernels_refuse_what_the_real_ones_refuse():
    # the fakes returned shapes for calls that cannot run, so a traced program failed only later
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        G, U = torch.randn(6, 4), torch.randn(5, 2)
        for call in (lambda: unisub.project(G, U), lambda: unisub.coefficients(G, U),
                     lambda: unisub.subspace_energy(G, U), lambda: unisub.project_(G, U)):
            with pytest.raises(RuntimeError, match="U has 5 rows, expected 6"):
                call()
        with pytest.raises(RuntimeError, match="V has 3 columns, expected 4"):
            unisub.reconstruct(torch.randn(2, 4), torch.randn(6, 2), torch.randn(5, 3))
        with pytest.raises(RuntimeError, match="metric must be"):
            unisub.subspace_distance(torch.randn(6, 2), torch.randn(6, 2), metric="bogus")
        with pytest.raises(RuntimeError, match="equal row counts"):
            unisub.principal_angles(torch.randn(6, 2), torch.randn(5, 2))
        with pytest.raises(RuntimeError, match="method must be 'auto', 'gram' or 'randomized'"):
            unisub.mode_svd(torch.randn(3, 4, 5), 1, method="lapack")


def test_null_and_rank_rule_inputs_out_of_their_domain_are_refused():
    # a negative N or NaN energy gave a null of zeros; a NaN spectrum kept one direction
    for op in (torch.ops.unisub.marchenko_pastur_null, lambda p, N, t: torch.ops.unisub.gaussian_null(p, N, t, 0)):
        with pytest.raises(RuntimeError, match="N .* must be >= 0"):
            op(4, -3, 1.0)
        with pytest.raises(RuntimeError, match="total .* must be finite"):
            op(4, 10, float("nan"))
    with pytest.raises(ValueError, match="NaN or infinity"):
        torch.ops.unisub.rank_for_energy(torch.tensor([1.0, float("nan")], dtype=torch.float64), 0.9)
