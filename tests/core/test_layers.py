"""Layering (DESIGN.md): trainer_core never imports Qt or pyqtgraph, directly or through a dependency."""

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import trainer_core

REPO = Path(__file__).resolve().parents[2]
CORE = Path(trainer_core.__file__).resolve().parent
GUI_PACKAGES = ("PySide6", "PySide2", "PyQt5", "PyQt6", "pyqtgraph", "qtpy", "shiboken6", "shiboken2")

# Imports every trainer_core module (except __main__, which runs the CLI), then reports what
# got loaded. Printed as JSON on the last line so that library chatter cannot confuse it.
WALKER = r"""
import importlib, json, pkgutil, sys
import trainer_core
failed, imported = {}, []
for info in pkgutil.walk_packages(trainer_core.__path__, "trainer_core."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except Exception as e:
        failed[info.name] = f"{type(e).__name__}: {e}"
print(json.dumps({"imported": imported, "failed": failed, "modules": sorted(sys.modules)}))
"""


def is_gui(module_name: str) -> bool:
    top = module_name.split(".")[0]
    return top in GUI_PACKAGES


def walk(code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("QT_API", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_every_trainer_core_module_loads_no_qt():
    result = walk(WALKER)
    expected = {f"trainer_core.{p.stem}" for p in CORE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert expected <= set(result["imported"]) | set(result["failed"])
    assert {"trainer_core.training.loop", "trainer_core.runner", "trainer_core.cli", "trainer_core.generation.generate"} <= \
        set(result["imported"])
    assert not result["failed"], result["failed"]
    gui = [m for m in result["modules"] if is_gui(m)]
    assert not gui, f"trainer_core pulled in GUI modules: {gui[:10]}"


def test_the_walker_would_notice_a_qt_import():
    """The check above can fail: the same walk, plus one Qt import, reports it."""
    probe = "import json, sys\nimport pyqtgraph\nimported, failed = [], {}\n" + WALKER.strip().splitlines()[-1]
    result = walk(probe)
    assert any(is_gui(m) for m in result["modules"])


def imported_names(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_no_qt_import_in_trainer_core_source():
    offenders = {}
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 15
    for path in files:
        source = path.read_text(encoding="utf-8")
        bad = sorted(n for n in imported_names(source) if is_gui(n))
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert not offenders, offenders


def test_source_scan_finds_qt_imports():
    sample = "import os\nfrom PySide6.QtCore import QObject\nimport pyqtgraph as pg\n" \
             "def f():\n    import importlib; importlib.import_module('qtpy')\n"
    assert sorted(n for n in imported_names(sample) if is_gui(n)) == ["PySide6.QtCore", "pyqtgraph", "qtpy"]


def test_every_module_is_a_walkable_package_member():
    names = {m.name for m in pkgutil.walk_packages([str(CORE)], "trainer_core.")}
    assert "trainer_core.data.loading" in names and "trainer_core.methods.sft" in names
