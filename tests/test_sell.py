"""The SELL layout (sell.py) against the dense matrix it stores; its checks; the net's row order."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings

from sparsenet.csr import CSR
from sparsenet.model import Layer, forward
from sparsenet.sell import BLOCK, LANES, SELL, net_layout, row_order
from test_csr import matrices, sparse_matrix


@settings(max_examples=60, deadline=None)
@given(matrices())
def test_round_trip(W):
    s = SELL.from_csr(CSR.from_dense(W)).check()
    np.testing.assert_array_equal(s.to_dense(), W)
    assert s.nnz == np.count_nonzero(W)
    assert s.n_slots * LANES >= s.nnz
    assert s.data.dtype == np.float32 and s.indices.dtype == np.uint8


@pytest.mark.parametrize("M, N", [(1, 1), (16, 32), (17, 33), (1000, 784), (10, 200), (3, 65535)])
def test_shapes_slots_and_padding(M, N):
    W = sparse_matrix(M, N, 0.1, seed=M + N)
    s = SELL.from_csr(CSR.from_dense(W)).check()
    np.testing.assert_array_equal(s.to_dense(), W)
    assert s.chunk_ptr.shape == (-(-M // LANES) + 1,)
    # an entry per non-empty (chunk, block), as many slots as its fullest row needs there, the
    # chunk's entries by decreasing slot count, then block
    counts = np.zeros((s.n_chunks * LANES, s.n_blocks * BLOCK), np.int64)
    counts[:M, :N] = W != 0
    need = counts.reshape(s.n_chunks, LANES, s.n_blocks, BLOCK).sum(axis=3).max(axis=1)
    for c in range(s.n_chunks):
        e = slice(s.chunk_ptr[c], s.chunk_ptr[c + 1])
        want = sorted((-n, b) for b, n in enumerate(need[c]) if n)
        assert [(-n, b) for n, b in zip(np.diff(s.slot_ptr)[e], s.block[e])] == want
    assert s.padding >= 1.0
    assert s.nbytes == sum(a.nbytes for a in (s.data, s.indices, s.block, s.slot_ptr, s.chunk_ptr))


def test_empty_rows_all_zero_and_single_nonzero():
    W = np.zeros((20, 40), np.float32)
    s = SELL.from_csr(CSR.from_dense(W)).check()
    assert s.n_slots == 0 and s.nnz == 0
    np.testing.assert_array_equal(s.to_dense(), W)
    W[17, 39] = -2.5
    s = SELL.from_csr(CSR.from_dense(W)).check()
    assert s.n_slots == 1 and s.nnz == 1
    assert s.data[0, 17 % LANES] == -2.5 and s.indices[0, 17 % LANES] == 39 % BLOCK
    np.testing.assert_array_equal(s.to_dense(), W)


def _good():
    return SELL.from_csr(CSR.from_dense(sparse_matrix(20, 40, 0.3))).check()


@pytest.mark.parametrize("change, message", [
    (lambda s: dict(slot_ptr=s.slot_ptr[:-1]), "slot_ptr has"),
    (lambda s: dict(chunk_ptr=s.chunk_ptr[:-1]), "chunk_ptr has"),
    (lambda s: dict(chunk_ptr=s.chunk_ptr - 1), "chunk_ptr must start at 0"),
    (lambda s: dict(block=s.block + np.int32(s.n_blocks)), "block must lie in"),
    (lambda s: dict(slot_ptr=s.slot_ptr[::-1].copy()), "never decrease"),
    (lambda s: dict(data=s.data.astype(np.float64)), "data must be float32"),
    (lambda s: dict(indices=s.indices[:-1]), "indices must be uint8"),
    (lambda s: dict(indices=s.indices + np.uint8(BLOCK)), "indices must be <"),
    (lambda s: dict(nnz=s.nnz - 1), "more than nnz"),
    (lambda s: dict(shape=(17, 40)), "outside the 17 x 40"),
    (lambda s: dict(shape=(20, 33)), "outside the 20 x 33"),
])
def test_check_names_the_problem(change, message):
    s = _good()
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(s, **change(s)).check()


def test_row_order_sorts_by_count_stably():
    W = np.zeros((5, 4), np.float32)
    W[1, :3] = 1
    W[3, :3] = 1
    W[4, 0] = 1
    assert list(row_order(CSR.from_dense(W))) == [1, 3, 4, 0, 2]


def _net(seed=0, sizes=(70, 50, 40, 9), density=0.3):
    rng = np.random.default_rng(seed)
    net = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        W[rng.random(W.shape) >= density] = 0
        net.append(Layer(W, rng.standard_normal(n_out).astype(np.float32)))
    return net


@pytest.mark.parametrize("sort_rows", [True, False])
def test_net_layout_computes_the_same_net(sort_rows):
    net = _net()
    layers, perms = net_layout([l.weight for l in net], sort_rows=sort_rows)
    x = np.random.default_rng(1).random((3, 70)).astype(np.float32)
    h = x
    for i, (s, p, l) in enumerate(zip(layers, perms, net)):
        s.check()
        h = h @ s.to_dense().T + l.bias[p]
        if i < len(net) - 1:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(h, forward(net, x), rtol=1e-5, atol=1e-5)
    assert list(perms[-1]) == list(range(9))             # logits keep their order
    if sort_rows:
        for s in layers[:-1]:
            counts = np.count_nonzero(s.to_dense(), axis=1)
            assert np.all(np.diff(counts) <= 0)


def test_sorting_reduces_padding_of_uneven_rows():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((256, 256)).astype(np.float32)
    W[rng.random(W.shape) >= rng.random((256, 1)) * 0.3] = 0     # rows of very different density
    plain = SELL.from_csr(CSR.from_dense(W)).padding
    (s, _), _ = net_layout([W, np.ones((2, 256), np.float32)])
    assert s.padding < plain
