"""Mutating ops refuse memory they cannot write safely (issue #15): a written tensor that overlaps
itself (stride 0) or any tensor the op reads, named in the error. Views that share a buffer but no
element (two halves, interleaved column blocks) are accepted and give the same result as copies."""
import pytest
import torch

import unisub


def orthonormal(rows, cols, gen, dtype=torch.float64):
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=dtype))[0]


def expected_projection(G, U, V, complement):
    return unisub.project(G.clone(), None if U is None else U.clone(), None if V is None else V.clone(), complement)


def test_g_as_its_own_basis_is_refused(device, gen):
    G = orthonormal(6, 6, gen).to(device)
    # Before the check this ran and left G off by 0.72 (max abs).
    with pytest.raises(RuntimeError, match=r"project_: G is written in place and must not share memory with U"):
        unisub.project_(G, G, None, False, True)


def test_basis_sliced_from_g_is_refused(device, gen):
    G = torch.randn(8, 5, generator=gen, dtype=torch.float64).to(device)
    before = G.clone()
    with pytest.raises(RuntimeError, match=r"G is written in place and must not share memory with U"):
        unisub.project_(G, G[:, :2], None, False, False)  # off by 100 % before the check
    assert torch.equal(G, before)  # nothing written


def test_transposed_g_as_v_is_refused(device, gen):
    G = torch.randn(5, 5, generator=gen, dtype=torch.float64).to(device)
    with pytest.raises(RuntimeError, match=r"must not share memory with V"):
        unisub.project_(G, None, G.T, False, False)


def test_partial_overlap_through_a_shared_buffer_is_refused(device, gen):
    buf = torch.randn(12, 4, generator=gen, dtype=torch.float64).to(device)
    G, U = buf[4:8], buf[6:10, :2]  # rows 6 and 7 are both G's and U's
    with pytest.raises(RuntimeError, match=r"must not share memory with U"):
        unisub.project_(G, U, None, False, False)


def test_interleaved_columns_sharing_one_column_are_refused(device, gen):
    buf = torch.randn(6, 7, generator=gen, dtype=torch.float64).to(device)
    G, U = buf[:, :5], buf[:, 4:6]  # column 4 is both
    with pytest.raises(RuntimeError, match=r"must not share memory with U"):
        unisub.project_(G, U, None, False, False)


def test_expanded_g_is_refused(device):
    G = torch.ones(1, 5, dtype=torch.float64, device=device).expand(4, 5)
    with pytest.raises(RuntimeError, match=r"project_: G is written in place but has internal overlap"):
        unisub.project_(G, None, torch.eye(5, 2, dtype=torch.float64, device=device), False)


@pytest.mark.parametrize("complement", [False, True])
def test_disjoint_halves_of_one_buffer_are_accepted(complement, device, gen):
    m, n, k = 7, 5, 3
    buf = torch.empty(2 * m * n, dtype=torch.float64, device=device)
    G, Ubuf = buf[: m * n].view(m, n), buf[m * n:].view(m, n)
    G.copy_(torch.randn(m, n, generator=gen, dtype=torch.float64))
    Ubuf[:, :k].copy_(orthonormal(m, k, gen))
    U = Ubuf[:, :k]
    want = expected_projection(G, U, None, complement)
    unisub.project_(G, U, None, complement)
    assert (G - want).abs().max() <= 1e-14 * want.abs().max().clamp_min(1)


def test_interleaved_columns_without_a_shared_element_are_accepted(device, gen):
    m, n, k = 9, 4, 3
    buf = torch.zeros(m, n + k, dtype=torch.float64, device=device)
    G, U = buf[:, :n], buf[:, n:]  # every row holds a piece of each: ranges interleave
    G.copy_(torch.randn(m, n, generator=gen, dtype=torch.float64))
    U.copy_(orthonormal(m, k, gen))
    want = expected_projection(G, U, None, False)
    unisub.project_(G, U, None, False)
    assert (G - want).abs().max() <= 1e-14 * want.abs().max().clamp_min(1)


def test_shared_broadcast_basis_is_still_accepted(device, gen):
    G = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64).to(device)
    U = orthonormal(6, 2, gen).to(device).expand(4, 6, 2)  # stride-0 reads are fine
    want = expected_projection(G, U.contiguous(), None, False)
    unisub.project_(G, U, None, False)
    assert (G - want).abs().max() <= 1e-14


def test_list_refuses_a_g_that_is_another_entrys_basis(device, gen):
    G0 = orthonormal(6, 2, gen).to(device)
    G1 = torch.randn(6, 4, generator=gen, dtype=torch.float64).to(device)
    before = [G0.clone(), G1.clone()]
    with pytest.raises(RuntimeError, match=r"project_list_: Gs\[0\] is written in place and must not share memory with Us\[1\]"):
        unisub.project_list_([G0, G1], [None, G0], [None, None], True)
    assert torch.equal(G0, before[0]) and torch.equal(G1, before[1])  # validated before any write


def test_list_refuses_one_tensor_written_twice(device, gen):
    G = torch.randn(6, 4, generator=gen, dtype=torch.float64).to(device)
    U = orthonormal(6, 2, gen).to(device)
    with pytest.raises(RuntimeError, match=r"Gs\[0\] .*share memory with Gs\[1\] \(also written\)"):
        unisub.project_list_([G, G], [U, U], [None, None])
    with pytest.raises(RuntimeError, match=r"share memory with Gs\[1\] \(also written\)"):
        unisub.project_list_([G, G[:3]], [U, None], [None, None])


def test_list_refuses_expanded_g(device, gen):
    G = torch.ones(1, 4, dtype=torch.float64, device=device).expand(6, 4)
    with pytest.raises(RuntimeError, match=r"Gs\[0\] is written in place but has internal overlap"):
        unisub.project_list_([G], [orthonormal(6, 2, gen).to(device)], [None])


def test_list_accepts_views_of_one_flat_buffer(device, gen):
    # Optimizers keep gradients as views of one flat buffer: disjoint, so accepted.
    flat = torch.randn(6 * 4 + 5 * 3, generator=gen, dtype=torch.float64).to(device)
    G0, G1 = flat[:24].view(6, 4), flat[24:].view(5, 3)
    U0, V1 = orthonormal(6, 2, gen).to(device), orthonormal(3, 2, gen).to(device)
    want = [expected_projection(G0, U0, None, False), expected_projection(G1, None, V1, False)]
    unisub.project_list_([G0, G1], [U0, None], [None, V1])
    assert (G0 - want[0]).abs().max() <= 1e-14 and (G1 - want[1]).abs().max() <= 1e-14


def test_gram_update_refuses_x_aliasing_g(device, gen):
    G = torch.randn(5, 5, generator=gen, dtype=torch.float64).to(device)
    G = G + G.T
    before = G.clone()
    with pytest.raises(RuntimeError, match=r"gram_update_: G is written in place and must not share memory with X"):
        unisub.gram_update_(G, G.unsqueeze(0), 1)
    assert torch.equal(G, before)


def test_gram_update_refuses_expanded_g(device):
    G = torch.zeros(1, 4, dtype=torch.float64, device=device).expand(4, 4)
    with pytest.raises(RuntimeError, match=r"gram_update_: G is written in place but has internal overlap"):
        unisub.gram_update_(G, torch.ones(2, 4, 3, dtype=torch.float64, device=device), 1)


def test_gram_update_accepts_x_from_another_part_of_gs_buffer(device, gen):
    buf = torch.zeros(4 * 4 + 2 * 4 * 3, dtype=torch.float64, device=device)
    G, X = buf[:16].view(4, 4), buf[16:].view(2, 4, 3)
    X.copy_(torch.randn(2, 4, 3, generator=gen, dtype=torch.float64))
    unisub.gram_update_(G, X, 1)
    ref = torch.einsum("bij,bkj->ik", X, X)
    assert (G - ref).abs().max() <= 1e-13 * ref.abs().max()
