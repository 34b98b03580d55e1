"""The layering of docs/architecture.md: a module imports only from its own layer or the ones below."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sparsenet"

# layer of each module, bottom (0) to top; docs/architecture.md has the same table
LAYERS = [
    ("files", "hashing", "progress", "names", "checks", "threads", "cpu", "runlock", "stats", "cluster", "__init__"),
    ("idx", "sources", "cache", "offline", "data"),
    ("model", "train_kernels", "train", "checkpoint"),
    ("prune", "sweep"),
    ("csr", "sell", "sell8", "bsr", "nm", "bitmap", "kernels", "simd", "cfuncs", "sell_kernels", "sell8_kernels",
     "bitmap_kernels", "dense_kernels", "bsr_kernels", "nm_kernels"),
    ("plan",),
    ("engine_base", "engines", "csr_engine", "structured_engines"),
    ("timing", "grid", "machine", "results", "study_config", "timing_inputs"),
    ("analysis",),
    ("plots", "report", "compare"),
    ("study",),                                 # the study's last stage writes the report
    ("cli", "__main__"),
]
LAYER = {m: i for i, mods in enumerate(LAYERS) for m in mods}
KERNELS = {"kernels", "simd", "cfuncs", "sell_kernels", "sell8_kernels", "bitmap_kernels", "dense_kernels", "bsr_kernels",
           "nm_kernels", "train_kernels"}


def _imports(path):
    """sparsenet modules a file imports (at top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sparsenet"):
            if node.module == "sparsenet":
                found |= {a.name for a in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sparsenet.")}
    return found - {"__version__"}


def test_every_module_has_a_layer():
    modules = {p.stem for p in PKG.glob("*.py")}
    assert modules - set(LAYER) == set(), "add new modules to LAYERS here and to docs/architecture.md"


@pytest.mark.parametrize("module", sorted(p.stem for p in PKG.glob("*.py")))
def test_imports_go_down(module):
    for dep in _imports(PKG / f"{module}.py"):
        assert dep in LAYER, f"{module} imports unknown module {dep}"
        assert LAYER[dep] <= LAYER[module], f"{module} (layer {LAYER[module]}) imports {dep} (layer {LAYER[dep]})"


@pytest.mark.parametrize("module", sorted(KERNELS))
def test_kernels_import_no_engine_plan_or_io(module):
    """Kernels take raw arrays and decisions as arguments: only layouts' constants and IR helpers."""
    allowed = {"simd", "cfuncs", "sell", "sell8", "bitmap", "kernels", "bitmap_kernels", "nm", "bsr", "cpu"}
    path = PKG / f"{module}.py"
    if path.exists():
        assert _imports(path) <= allowed, f"{module} imports {_imports(path) - allowed}"
