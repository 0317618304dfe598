"""The packages form one chain, `mmssl` <- `pipelines` <- `recipes`: the library imports neither of the others, and
it imports with only torch and timm installed (`mmssl.launch` says how the CLI reaches the layers above)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABOVE = ("pipelines", "recipes")


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at its top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_the_library_imports_nothing_from_the_layers_above() -> None:
    found = {}
    for path in sorted((ROOT / "mmssl").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        above = [n for n in _imports(path) if n.split(".")[0] in ABOVE]
        if above:
            found[rel] = above
    assert not found, found


def test_pipelines_import_nothing_from_recipes() -> None:
    found = {p.relative_to(ROOT).as_posix(): [n for n in _imports(p) if n.split(".")[0] == "recipes"]
             for p in sorted((ROOT / "pipelines").rglob("*.py"))}
    assert not {k: v for k, v in found.items() if v}


BLOCKER = """
import importlib, importlib.abc, pkgutil, sys

class Absent(importlib.abc.MetaPathFinder):  # as if decord, av and webdataset were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("decord", "av", "webdataset"):
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Absent())
import mmssl
for info in pkgutil.walk_packages(mmssl.__path__, "mmssl."):
    if info.name != "mmssl.__main__":  # it runs the CLI
        importlib.import_module(info.name)
from mmssl.methods import all_methods
from mmssl.cli import build_parser
build_parser()  # every subcommand registers without the data pipelines
print(len(all_methods()), "methods")
"""


def test_the_library_imports_without_decord_av_or_webdataset() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "methods" in out.stdout
