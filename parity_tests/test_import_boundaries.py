"""Import boundaries, checked over every module of the packages (not a hand list):
- the core and the runtimes never load torch or transformers at import (synthesis runs without them);
- no module, not even lazily inside a function, imports against the data flow: runtimes never import
  reference_model or converters, reference_model never imports runtimes or converters, and the core never
  imports the other packages except in `valle_export.cli`, the one composition root.
"""
import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TORCH_FREE = ("valle_export", "runtimes")
FORBIDDEN = {  # package -> packages it must never import, at module level or lazily
    "runtimes": ("reference_model", "converters"),
    "reference_model": ("runtimes", "converters"),
    "valle_export": ("reference_model", "converters", "runtimes", "torch", "transformers"),
}
COMPOSITION_ROOT = "valle_export.cli"


def package_modules(package: str) -> list[str]:
    """Every module of the package, subpackages (runtimes.server) included."""
    found = [package] + [m.name for m in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}.")]
    assert len(found) > 1, f"no modules found under {package}"
    return found


def imported_names(module: str) -> set[str]:
    """Every module name an `import` statement of this module's source names (top level or nested)."""
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("module", [m for p in TORCH_FREE for m in package_modules(p)])
def test_no_torch_at_import(module):
    code = (f"import sys, {module}; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, f"{module} imports {r.stdout.strip()} {r.stderr[-300:]}"


@pytest.mark.parametrize("module", [m for p in FORBIDDEN for m in package_modules(p) if m != COMPOSITION_ROOT])
def test_no_import_against_the_data_flow(module):
    banned = FORBIDDEN[module.split(".")[0]]
    bad = sorted(n for n in imported_names(module) if n.split(".")[0] in banned)
    assert not bad, f"{module} imports {bad} (its package must not import {', '.join(banned)})"
