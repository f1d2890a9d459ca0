"""serving/ never imports torch or components/, statically and at run time."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "components")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_serving_module_imports_torch_or_components():
    files = sorted((REPO / "serving").rglob("*.py"))
    assert len(files) >= 8
    offenders = {
        str(f.relative_to(REPO)): sorted(imported_roots(f) & set(FORBIDDEN)) for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_components_module_imports_serving():
    files = sorted((REPO / "components").rglob("*.py"))
    assert [str(f.relative_to(REPO)) for f in files if "serving" in imported_roots(f)] == []


def test_importing_the_models_loads_neither_torch_nor_feast():
    code = (
        "import json, sys\n"
        "import serving.recommender, serving.generator, serving.server, serving.__main__\n"
        "mods = set(sys.modules)\n"
        "print(json.dumps({'torch': 'torch' in mods, 'feast': 'feast' in mods,\n"
        "  'components': any(m.split('.')[0] == 'components' for m in mods),\n"
        "  'kserve': 'kserve' in mods}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "torch": False,
        "feast": False,
        "components": False,
        "kserve": True,
    }
