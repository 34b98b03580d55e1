"""One shared helper of the portability tests: a Numba dispatcher's LLVM IR compiled for aarch64.

Used inside the tests' subprocesses (run with NUMBA_OPT=0: the optimiser would turn some IR into x86
intrinsics) as `sys.path.insert(0, "tests"); from aarch64 import aarch64_asm`.
"""
import re


def aarch64_asm(dispatcher) -> list:
    """NEON assembly of every compiled signature of `dispatcher` (or a cfuncs.Callback), re-targeted from this CPU's IR to
    aarch64; asserts the IR is there, uses no x86 intrinsic, verifies, and emits an object."""
    import llvmlite.binding as llvm
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    tm = llvm.Target.from_triple("aarch64-unknown-linux-gnu").create_target_machine(cpu="generic", features="+neon")
    irs = list(dispatcher.inspect_llvm().values())
    assert irs, dispatcher.__name__
    out = []
    for ir in irs:
        ir = re.sub(r'"target-(cpu|features)"="[^"]*"', "", ir)
        ir = re.sub(r"^target triple = .*$", 'target triple = "aarch64-unknown-linux-gnu"', ir, flags=re.M)
        ir = re.sub(r"^target datalayout = .*$", f'target datalayout = "{tm.target_data}"', ir, flags=re.M)
        assert "llvm.x86" not in ir, dispatcher.__name__ + " uses an x86 intrinsic"
        module = llvm.parse_assembly(ir)
        module.verify()
        assert len(tm.emit_object(module)) > 0
        out.append(tm.emit_assembly(module))
    return out
