"""LLVM IR building blocks for the kernels that need explicit SIMD registers (Numba has no vector types).

A Numba @intrinsic receives an llvmlite IRBuilder; `IR` wraps the few things our kernels do with
it: raw data pointers of array arguments, i64 arithmetic, unaligned <16 x float> loads and
stores, broadcasts, fused multiply-adds (llvm.fmuladd). `require_arrays` is every intrinsic's
typing-time check of its array arguments (raw pointers would misread a float64 or strided array).

csr_rows: out[i, col0:col0 + 16 W] = (relu)(bias[i] + sum_k data[k] * HT[indices[k], col0:][:16 W])
for rows r0..r1-1, on W <16 x float> accumulator registers per partial sum (`acc_sets`: 2 partial
sums over alternate non-zeros, against the FMA latency, where the registers hold them): a row's tile stays in registers from its first
non-zero to its store (the loop Numba made of the old whole-row kernel, 8 non-zeros per pass, kept
out[i, :] in memory and re-checked aliasing per pass). Plain LLVM vector IR, no target intrinsic: AVX2 gets it as
pairs of 256-bit operations, aarch64 as NEON (tests/test_portability.py). Figures: docs/perf-notes.md.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from sparsenet.cpu import cpu

LANES = 16
_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
VF = ir.VectorType(_F32, LANES)


def require_arrays(kernel: str, spec, arrays) -> None:
    """TypingError unless each array argument is a C-contiguous array of its expected dtype and ndim.

    spec: (name, dtype, ndim) per argument; dtype a Numba type, or types.Integer for any integer.
    An intrinsic reads raw data pointers: a float64 or strided array would be misread silently.
    """
    for (name, dtype, ndim), ty in zip(spec, arrays):
        ok_dtype = isinstance(getattr(ty, "dtype", None), types.Integer) if dtype is types.Integer \
            else getattr(ty, "dtype", None) == dtype
        if not (isinstance(ty, types.Array) and ok_dtype and ty.ndim == ndim and ty.layout == "C"):
            want = "integer" if dtype is types.Integer else str(dtype)
            raise TypingError(f"{kernel}: {name} must be a C-contiguous {ndim}-d {want} array, got {ty}")


class IR:
    """Helpers over one IRBuilder inside an intrinsic's codegen."""

    def __init__(self, context, builder, sig, args):
        self.b = builder
        self.args = args
        # raw data pointers of the array arguments (None for the others)
        self.ptr = [cgutils.create_struct_proxy(ty)(context, builder, value=a).data
                    if isinstance(ty, types.Array) else None for ty, a in zip(sig.args, args)]

    @staticmethod
    def const(v):
        return ir.Constant(_I64, v)

    def i64(self, v, signed=True):
        """Any integer value as i64."""
        if v.type.width >= 64:
            return v
        return self.b.sext(v, _I64) if signed else self.b.zext(v, _I64)

    def at(self, p, i, signed=True):
        """p[i] as i64."""
        return self.i64(self.b.load(self.b.gep(p, [i])), signed)

    def vload(self, p, offset, vt=VF):
        """Unaligned vector load of p[offset:offset + len(vt)]."""
        return self.b.load(self.b.bitcast(self.b.gep(p, [offset]), vt.as_pointer()), align=4)

    def opaque(self, p):
        """p as a value LLVM cannot see through (an empty inline asm): loads at constant offsets from
        it address [register + displacement], not [base + index + displacement]."""
        return self.b.asm(ir.FunctionType(p.type, [p.type]), "", "=r,0", [p], False, name="opaque")

    def vstore(self, value, p, offset):
        self.b.store(value, self.b.bitcast(self.b.gep(p, [offset]), value.type.as_pointer()), align=4)

    def broadcast(self, x):
        v = self.b.insert_element(ir.Constant(VF, ir.Undefined), x, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, LANES), None))

    def fma(self, a, x, acc):
        """a * x + acc; fmuladd lets LLVM fuse it where the target has FMA (llvm.fma would become 16
        scalar fmaf calls on a target without it)."""
        vt = a.type
        name = f"llvm.fmuladd.v{vt.count}f32"
        f = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(vt, [vt, vt, vt]), name)
        return self.b.call(f, [a, x, acc])

    def relu_if(self, flag, v):
        """max(v, 0) where the i1 `flag` is set, else v; NaN stays NaN, as numpy.maximum keeps it."""
        zero = ir.Constant(VF, None)
        return self.b.select(flag, self.b.select(self.b.fcmp_ordered("<", v, zero), zero, v), v)

    def zeroed(self, n):
        """n stack slots holding a <16 x float> zero (promoted to registers by LLVM)."""
        return [cgutils.alloca_once_value(self.b, ir.Constant(VF, None)) for _ in range(n)]

    def sum(self, slots):
        total = self.b.load(slots[0])
        for s in slots[1:]:
            total = self.b.fadd(total, self.b.load(s))
        return total

    def pairs(self, lo, hi, body, n_acc):
        """body(k, u) for k in lo..hi-1, in groups of n_acc (u = k's place in its group, 0 in the
        remainder): n_acc independent chains for the caller's accumulators."""
        n = self.b.sub(hi, lo)
        mid = self.b.add(lo, self.b.sub(n, self.b.srem(n, self.const(n_acc))))
        with cgutils.for_range_slice(self.b, lo, mid, self.const(n_acc), inc=True) as (k, _):
            for u in range(n_acc):
                body(self.b.add(k, self.const(u)), u)
        with cgutils.for_range_slice(self.b, mid, hi, self.const(1), inc=True) as (k, _):
            body(k, 0)


_ACC = 2
_ROWS_ARGS = (("data", types.float32, 1), ("indices", types.Integer, 1), ("indptr", types.Integer, 1),
              ("bias", types.float32, 1), ("HT", types.float32, 2), ("out", types.float32, 2))


def acc_sets(W: int, isa: str) -> int:
    """Partial sums (sets of W accumulator vectors over alternate non-zeros, against the FMA latency)
    a csr_rows tile of W <16 x float> keeps: 2 while the 2 W vectors take at most a quarter of the
    vector registers (AVX-512's 32 zmm: W <= 4), else 1 (AVX2's 16 ymm hold 8 <16 x float>: W = 4
    in 2 sets would take all of them and spill; NEON's 32 q likewise). On the AVX2 target a 64-column
    tile with 1 set ran 11-18 % faster than 32-column tiles with 2 (docs/perf-notes.md, session 12)."""
    return _ACC if W <= 2 or isa == "avx512" else 1


def _make_csr_rows(W):
    @intrinsic
    def csr_rows(typingctx, data, indices, indptr, bias, HT, out, r0, r1, ld_h, ld_o, col0, first, relu):
        require_arrays(f"simd.csr_rows{LANES * W}", _ROWS_ARGS, (data, indices, indptr, bias, HT, out))
        sig = types.void(data, indices, indptr, bias, HT, out, r0, r1, ld_h, ld_o, col0, first, relu)

        def codegen(context, builder, sig, args):
            g = IR(context, builder, sig, args)
            p_data, p_idx, p_ptr, p_bias, p_h, p_out = g.ptr[:6]
            r0, r1, ld_h, ld_o, col0 = (g.i64(a) for a in args[6:11])
            first, relu = args[11], args[12]
            n_acc = acc_sets(W, cpu().isa)         # the ISA Numba compiles for, at compile time
            accs = [g.zeroed(W) for _ in range(n_acc)]
            zero = ir.Constant(VF, None)
            with cgutils.for_range_slice(builder, r0, r1, g.const(1), inc=True) as (i, _):
                o = builder.add(builder.mul(i, ld_o), col0)
                for w in range(W):        # an earlier column panel's sums, or 0 (the bias is added at the end)
                    prev = g.vload(p_out, builder.add(o, g.const(LANES * w)))
                    builder.store(builder.select(first, zero, prev), accs[0][w])
                for acc in accs[1:]:
                    for a in acc:
                        builder.store(zero, a)

                def nonzero(k, u):
                    d = g.broadcast(builder.load(builder.gep(p_data, [k])))
                    row = builder.add(builder.mul(g.at(p_idx, k, signed=False), ld_h), col0)
                    hp = g.opaque(builder.gep(p_h, [row]))       # [reg + disp]: see IR.opaque
                    for w in range(W):
                        h = g.vload(hp, g.const(LANES * w))
                        builder.store(g.fma(d, h, builder.load(accs[u][w])), accs[u][w])

                g.pairs(g.at(p_ptr, i), g.at(p_ptr, builder.add(i, g.const(1))), nonzero, n_acc)
                b = builder.select(first, g.broadcast(builder.load(builder.gep(p_bias, [i]))), zero)
                for w in range(W):
                    t = builder.fadd(g.sum([acc[w] for acc in accs]), b)
                    g.vstore(g.relu_if(relu, t), p_out, builder.add(o, g.const(LANES * w)))
            return context.get_dummy_value()

        return sig, codegen

    return csr_rows


csr_rows16 = _make_csr_rows(1)   # 16-column tiles
csr_rows32 = _make_csr_rows(2)   # 32-column tiles
csr_rows64 = _make_csr_rows(4)   # 64-column tiles (chunks of 64 columns)


@intrinsic
def claim(typingctx, counter):
    """The old counter[0], atomically incremented: the next piece of work of a parallel region.
    Threads claim pieces (chunks, row blocks) until one claims past the end, so a core that runs
    slower (a VM's vCPU shares its core with a neighbour, another process) does fewer pieces
    instead of holding the call (an LLVM atomicrmw: every target compiles it)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        return None
    sig = types.int64(counter)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", ary.data, ir.Constant(ir.IntType(64), 1), "monotonic")

    return sig, codegen
