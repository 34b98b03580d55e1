"""The SELL kernels (sell_kernels.py) against NumPy on the same weights.

Every test runs the portable twin (any CPU) and, where Numba targets AVX-512F, the AVX-512 kernel.
"""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from sparsenet import sell_kernels
from sparsenet.csr import CSR
from sparsenet.model import Layer, forward
from sparsenet.bitmap import GROUP, Bitmap, layer_nbytes as bitmap_nbytes
from sparsenet.sell import BLOCK, LANES, SELL, flatten, net_layout
from test_csr import sparse_matrix

# (serial matvec, parallel matvec, whole forward) per kernel this CPU runs
VARIANTS = {"portable": (sell_kernels.sell_matvec_portable_serial, sell_kernels.sell_matvec_portable,
                         sell_kernels.sell_forward_portable)}
if sell_kernels.available():
    VARIANTS["avx512"] = (sell_kernels.sell_matvec_bias_relu_serial, sell_kernels.sell_matvec_bias_relu,
                          sell_kernels.sell_forward)


def _layer_args(W, bias, x, packed=False):
    """(SELL, the matvec's arguments up to relu): (data, masks, vptr, indices, block, slot_ptr,
    chunk_ptr, bias, x, out), padded or packed values."""
    s = SELL.from_csr(CSR.from_dense(W)).check()
    xb = np.full(max(s.n_blocks * BLOCK, 1), 7.0, np.float32)        # padding must not matter
    xb[:x.size] = x
    b = np.zeros(s.n_chunks * LANES, np.float32)
    b[:bias.size] = bias
    out = np.full(s.n_chunks * LANES, np.nan, np.float32)
    if packed:
        data, masks, vptr = s.packed()
    else:
        data, masks, vptr = s.data.ravel(), np.zeros(0, np.uint16), np.zeros(0, np.int64)
    return s, (data, masks, vptr, s.indices.ravel(), s.block, s.slot_ptr, s.chunk_ptr, b, xb, out)


@pytest.mark.parametrize("M, N, density", [(1, 1, 1.0), (16, 32, 0.5), (17, 33, 0.3), (1000, 784, 0.1),
                                           (10, 200, 0.9), (40, 70, 0.0), (33, 1000, 0.01)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("parts", [None, 1, 2, 3])
@pytest.mark.parametrize("packed", [False, True])
def test_matvec(M, N, density, relu, parts, packed):
    rng = np.random.default_rng(M * N)
    W = sparse_matrix(M, N, density, seed=N)
    bias = rng.standard_normal(M).astype(np.float32)
    x = rng.standard_normal(N).astype(np.float32)
    want = W.astype(np.float64) @ x + bias
    if relu:
        want = np.maximum(want, 0)
    for serial, parallel, _ in VARIANTS.values():
        s, args = _layer_args(W, bias, x, packed)
        if parts is None:
            serial(*args, relu, packed)
        else:
            parallel(*args, relu, packed, parts)
        out = args[-1]
        np.testing.assert_allclose(out[:M], want, rtol=1e-4, atol=1e-4)
        assert np.all(out[M:] == 0)                      # padding rows: no weights, zero bias


@pytest.mark.parametrize("density", [1.0, 0.3, 0.05, 0.0])
def test_packed_values_hold_the_non_zeros_in_slot_order(density):
    """SELL.packed: the mask of each slot marks its non-zero lanes, the values follow slot by slot,
    vptr[c] is where chunk c's first slot starts, and LANES zeros close the array."""
    W = sparse_matrix(37, 70, density, seed=3)
    s = SELL.from_csr(CSR.from_dense(W))
    values, masks, vptr = s.packed()
    lanes = (masks[:, None] >> np.arange(LANES)) & 1
    np.testing.assert_array_equal(lanes.astype(bool), s.data != 0)
    np.testing.assert_array_equal(values[:-LANES], s.data[s.data != 0])
    assert values.dtype == np.float32 and np.all(values[-LANES:] == 0) and values.size == s.nnz + LANES
    first_slot = np.asarray(s.slot_ptr)[np.asarray(s.chunk_ptr)]
    np.testing.assert_array_equal(vptr, [int(lanes[:f].sum()) for f in first_slot])


def test_packed_form_is_smaller_where_slots_are_padded():
    from sparsenet.sell import form_nbytes
    for density, smaller in ((0.1, True), (1.0, False)):      # a full slot costs its mask on top
        s = SELL.from_csr(CSR.from_dense(sparse_matrix(64, 256, density, seed=1)))
        forms = form_nbytes([s])
        assert (forms["sell-packed"] < forms["sell-padded"]) == smaller


def _bitmaps(net, which):
    """Per layer bitmap flags: none, all, or every other layer (SELL and bitmap layers in one forward)."""
    return tuple({"none": False, "all": True, "mixed": i % 2 == 1}[which] for i in range(len(net)))


def sell_flatten(net, packed=False, bitmap="none"):
    arrays, (n_x, width), _ = flatten(net, packed, bitmap=_bitmaps(net, bitmap))
    return arrays, (np.zeros(n_x, np.float32), np.zeros(width, np.float32), np.zeros(width, np.float32))


def _net(sizes, density, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    net = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = sparse_matrix(n_out, n_in, density, seed=int(rng.integers(2**16)))
        net.append(Layer(W, rng.standard_normal(n_out).astype(np.float32) if bias else None))
    return net


@pytest.mark.parametrize("sizes", [(784, 1000, 500, 10), (5, 3), (100, 17, 33, 64, 2)])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.01])
@pytest.mark.parametrize("min_parallel_slots, threads", [(10**9, 1), (0, 2)])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bitmap", ["none", "all", "mixed"])
def test_forward_equals_dense_reference(sizes, density, min_parallel_slots, threads, packed, bitmap):
    net = _net(sizes, density, bias=density != 0.5)
    x = np.random.default_rng(2).random((1, sizes[0])).astype(np.float32)
    results = {}
    for name, (_, _, sell_forward) in VARIANTS.items():
        arrays, (xbuf, buf0, buf1) = sell_flatten(net, packed, bitmap)
        for buf in (xbuf, buf0, buf1):
            buf[:] = 1e30                                # stale contents of earlier calls
        logits = results[name] = np.full((1, sizes[-1]), np.nan, np.float32)
        sell_forward(*arrays, x, xbuf, buf0, buf1, min_parallel_slots, threads, logits)
        ref = forward(net, x)                            # float32 sums in another order: tolerance by scale
        np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max()) / 100))
    if "avx512" in results:                              # the ISA kernel against its twin
        scale = max(1.0, float(np.abs(results["portable"]).max()))
        np.testing.assert_allclose(results["avx512"], results["portable"], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bitmap", ["none", "all", "mixed"])
def test_forward_all_zero_layer(packed, bitmap):
    net = _net((50, 40, 30, 4), 0.5)
    net[1] = Layer(np.zeros_like(net[1].weight), net[1].bias)
    x = np.ones((1, 50), np.float32)
    for _, _, sell_forward in VARIANTS.values():
        arrays, bufs = sell_flatten(net, packed, bitmap)
        logits = np.empty((1, 4), np.float32)
        sell_forward(*arrays, x, *bufs, 10**9, 1, logits)
        np.testing.assert_allclose(logits, forward(net, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_flatten_matches_net_layout(packed):
    net = _net((70, 50, 9), 0.3)
    arrays, _ = sell_flatten(net, packed)
    data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, n_chunks, n_blocks, offsets, flag, *rows = arrays
    layers, perms = net_layout([l.weight for l in net])
    assert [r.size for r in rows] == [GROUP, 0, 0] and not offsets[6:].any()      # no bitmap layer
    assert flag is packed
    assert list(n_chunks) == [s.n_chunks for s in layers]
    assert list(n_blocks) == [s.n_blocks for s in layers]
    assert offsets[0, -1] * LANES == indices.size
    assert offsets[1, -1] == block.size and offsets[2, -1] == slot_ptr.size
    assert offsets[3, -1] == chunk_ptr.size and offsets[4, -1] == bias.size
    for l, s in enumerate(layers):
        np.testing.assert_array_equal(slot_ptr[offsets[2, l]:offsets[2, l + 1]], s.slot_ptr)
        values = data[offsets[5, l]:offsets[5, l + 1]]
        if packed:                                        # each layer's own values, masks and vptr
            v, m, p = s.packed()
            np.testing.assert_array_equal(values, v[:-LANES])
            np.testing.assert_array_equal(masks[offsets[0, l]:offsets[0, l + 1]], m)
            np.testing.assert_array_equal(vptr[offsets[3, l]:offsets[3, l + 1]], p)
        else:
            np.testing.assert_array_equal(values, s.data.ravel())
    assert data.size == offsets[5, -1] + (LANES if packed else 0)       # the packed kernel reads 16 floats
    assert (masks.size, vptr.size) == ((offsets[0, -1], offsets[3, -1]) if packed else (0, 0))
    np.testing.assert_array_equal(bias[:50], net[0].bias[perms[0]])


@pytest.mark.parametrize("packed", [False, True])
def test_flatten_holds_bitmap_layers_instead_of_sell(packed):
    net = _net((70, 50, 40, 9), 0.3)
    arrays, _, layers = flatten(net, packed, bitmap=(False, True, False))
    data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, _, _, offsets, _, values, bitmasks, rptr = arrays
    sell_sizes = offsets[[0, 1, 2, 3, 5], 2] - offsets[[0, 1, 2, 3, 5], 1]
    assert not sell_sizes.any()                                # layer 1: no slot, entry, chunk or value
    assert offsets[4, 2] - offsets[4, 1] == LANES * layers[1].n_chunks        # its bias as before
    assert list(np.diff(offsets[8])) == [0, layers[1].n_chunks * LANES + 1, 0]
    rows = Bitmap.from_dense(layers[1].to_dense())             # the stored (permuted) rows and columns
    np.testing.assert_array_equal(values[offsets[6, 1]:offsets[6, 2]], rows.values[:-GROUP])
    np.testing.assert_array_equal(bitmasks, rows.masks)
    np.testing.assert_array_equal(rptr, rows.rptr)
    assert values.size == rows.nnz + GROUP and not values[-GROUP:].any()
    for l in (0, 2):                                           # the other layers' SELL arrays as without
        np.testing.assert_array_equal(slot_ptr[offsets[2, l]:offsets[2, l + 1]], layers[l].slot_ptr)
    from sparsenet.sell import form_nbytes
    forms, plain = form_nbytes(layers, (False, True, False)), form_nbytes(layers)
    swap = form_nbytes([layers[1]])["sell-padded"] - bitmap_nbytes(layers[1].shape, layers[1].nnz) - 4 * 48
    assert plain["sell-padded"] - forms["sell-padded"] == swap
    with pytest.raises(ValueError, match="one flag a layer"):
        flatten(net, packed, bitmap=(True,))


def _call_chunk(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out):
    sell_kernels._chunk(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out, 0, True, False)


def test_intrinsic_refuses_a_cpu_without_avx512(monkeypatch):
    """Typing, not LLVM, says no: an AVX-512 instruction on an AVX2 target aborted the interpreter."""
    monkeypatch.setattr(sell_kernels, "available", lambda: False)
    s, args = _layer_args(np.ones((16, 32), np.float32), np.zeros(16, np.float32), np.ones(32, np.float32))
    data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, x, out = args
    # an index dtype no kernel uses: Numba caches an intrinsic's typing per signature, so a signature
    # typed earlier in this process (with AVX-512F available) would not ask the typer again
    with pytest.raises(TypingError, match="needs a CPU with AVX-512F"):
        njit(_call_chunk)(data, masks, vptr, indices, block.astype(np.int16), slot_ptr.astype(np.uint32), chunk_ptr,
                          x, bias, out)


@pytest.mark.parametrize("bad", ["float64-data", "strided-x", "int8-indices", "int32-masks"])
def test_intrinsic_refuses_wrong_arrays(bad, monkeypatch):
    """The intrinsic reads raw pointers: a float64 or strided array must be refused, not misread."""
    monkeypatch.setattr(sell_kernels, "available", lambda: True)   # typing only: nothing runs
    s, args = _layer_args(np.ones((16, 32), np.float32), np.zeros(16, np.float32), np.ones(32, np.float32), True)
    data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, x, out = args
    if bad == "float64-data":
        data, what = data.astype(np.float64), "data must be a C-contiguous 1-d float32 array"
    elif bad == "strided-x":
        x, what = np.repeat(x, 2)[::2], "x must be a C-contiguous 1-d float32 array"
    elif bad == "int32-masks":
        masks, what = masks.astype(np.int32), "masks must be a C-contiguous 1-d uint16 array"
    else:
        indices, what = indices.astype(np.int8), "indices must be a C-contiguous 1-d uint8 array"
    with pytest.raises(TypingError, match=what):
        njit(_call_chunk)(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out)
