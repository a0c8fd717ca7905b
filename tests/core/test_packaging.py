"""Packaging (issue 13), the parts Linux can check: setup_py2app.py's description of the
.app, the resource locator from a checkout / an installed wheel / a simulated bundle,
the icon files, and what a first launch of the bundle writes. The program log and user folders:
test_program_log.py; dropping files on the window: test_drag_and_drop.py."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import trainer_core
from trainer_core import resources

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def load_setup_py2app():
    spec = importlib.util.spec_from_file_location("setup_py2app", ROOT / "setup_py2app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle_setup():
    return load_setup_py2app()


def imported_top_level_names(*packages: str) -> dict[str, set[str]]:
    """Top-level module name -> files that import it (absolute imports anywhere in the source, lazy ones too)."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for file in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(file.relative_to(ROOT)))
    return found


def third_party_imports() -> dict[str, set[str]]:
    local = {"app", "trainer_core", "__future__"}
    return {name: files for name, files in imported_top_level_names("app", "trainer_core").items()
            if name not in local and name not in sys.stdlib_module_names}


def bundled_top_level(bundle_setup) -> set[str]:
    return {name.split(".")[0] for name in bundle_setup.PACKAGES + bundle_setup.INCLUDES}


def make_fake_bundle(bundle_setup, where: Path) -> Path:
    """An "app bundle" holding Contents/Resources exactly as setup_py2app.DATA_FILES lays it out."""
    bundle = where / f"{bundle_setup.APP_NAME}.app"
    contents = bundle / "Contents" / "Resources"
    for folder, sources in bundle_setup.DATA_FILES:
        target = contents / folder
        target.mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copy2(ROOT / source, target / Path(source).name)
    shutil.copy2(ROOT / bundle_setup.ICON, contents / Path(bundle_setup.ICON).name)
    return bundle


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def copy_source_tree(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "bench", "runs", ".device", "screenshots")
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


# ---------------------------------------------------------------- setup_py2app.py

def test_setup_py2app_imports_without_py2app(bundle_setup):
    if sys.platform != "darwin":
        assert importlib.util.find_spec("py2app") is None  # the module imported without it
    options = bundle_setup.OPTIONS
    assert options["iconfile"] == "resources/icon.icns" and options["argv_emulation"] is False
    assert options["packages"] is bundle_setup.PACKAGES and options["includes"] is bundle_setup.INCLUDES
    plist = options["plist"]
    assert plist["CFBundleName"] == "Fine-Tune Studio"
    assert plist["CFBundleIdentifier"] == "com.finetunestudio.app"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert plist["CFBundleShortVersionString"] == trainer_core.__version__ == pyproject["project"]["version"]
    assert plist["NSHighResolutionCapable"] is True
    assert plist["LSMinimumSystemVersion"] == "14.0"  # MLX's macOS wheels need macOS >= 14.0
    extensions = {ext for declared in plist["UTImportedTypeDeclarations"]
                  for ext in declared["UTTypeTagSpecification"]["public.filename-extension"]}
    assert extensions == {"jsonl", "gguf"}
    declared = {t["UTTypeIdentifier"] for t in plist["UTImportedTypeDeclarations"]}
    handled = {uti for doc in plist["CFBundleDocumentTypes"] for uti in doc["LSItemContentTypes"]}
    assert handled == declared


def test_running_it_without_py2app_says_why():
    if importlib.util.find_spec("py2app") is not None:
        pytest.skip("py2app is installed here")
    result = subprocess.run([PY, "setup_py2app.py", "py2app"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "py2app is not installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_bundle_lists_every_package_the_app_imports(bundle_setup):
    imports = third_party_imports()
    assert {"PySide6", "mlx", "mlx_lm", "numpy", "pyqtgraph"} <= set(imports)  # the walk sees the source
    bundled = bundled_top_level(bundle_setup)
    missing = {name: sorted(files) for name, files in imports.items()
               if name not in bundled and name not in bundle_setup.NOT_BUNDLED}
    assert not missing, f"imported but neither bundled nor listed in NOT_BUNDLED: {missing}"
    # each is a real third-party distribution installed here (so the build can copy it)
    distributions = importlib.metadata.packages_distributions()
    for name in imports:
        if name not in bundle_setup.NOT_BUNDLED:
            assert distributions.get(name), f"{name}: no installed distribution provides it"


def test_bundled_names_exist_and_are_not_excluded(bundle_setup):
    for name in bundle_setup.PACKAGES + bundle_setup.INCLUDES:
        assert importlib.util.find_spec(name) is not None, f"{name} is listed for the bundle but not installed"
    assert not set(bundle_setup.EXCLUDES) & set(bundle_setup.PACKAGES + bundle_setup.INCLUDES)
    assert "trainer_core" in bundle_setup.PACKAGES and "app" in bundle_setup.PACKAGES  # modules loaded by name
    for name in bundle_setup.OPTIONAL_PACKAGES:  # the demo model and pyarrow travel with the app when installed
        assert (name in bundle_setup.PACKAGES) == (importlib.util.find_spec(name) is not None)


def test_qt_modules_the_app_uses_are_bundled_and_the_rest_excluded(bundle_setup):
    used = {name.split(".")[1] for name in imported_module_names("app") if name.startswith("PySide6.")}
    used |= {"QtSvg"}  # pyqtgraph's SVG export
    assert used <= bundle_setup.QT_MODULES_USED
    excluded = {name.split(".")[1] for name in bundle_setup.EXCLUDES if name.startswith("PySide6.")}
    assert {"QtQml", "QtQuick", "QtWebEngineCore", "QtNetwork", "QtTest"} <= excluded
    assert not excluded & bundle_setup.QT_MODULES_USED
    assert "platforms/libqcocoa.dylib" in bundle_setup.QT_PLUGINS
    assert {"styles", "imageformats"} <= set(bundle_setup.QT_PLUGINS)


def imported_module_names(package: str) -> set[str]:
    names = set()
    for file in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_every_file_it_names_exists(bundle_setup):
    assert (ROOT / bundle_setup.MAIN_SCRIPT).is_file()
    assert (ROOT / bundle_setup.ICON).is_file()
    named = [source for _, sources in bundle_setup.DATA_FILES for source in sources]
    for source in named:
        assert (ROOT / source).is_file(), source
    assert {"resources/style.qss", "resources/icon.png", "resources/demo_data/train.jsonl",
            "resources/demo_preference/train.jsonl", "resources/demo_grpo/train.jsonl"} <= set(named)


def read_icns(path: Path) -> dict[bytes, bytes]:
    data = path.read_bytes()
    assert data[:4] == b"icns" and struct.unpack(">I", data[4:8])[0] == len(data)
    entries, offset = {}, 8
    while offset < len(data):
        kind, length = data[offset:offset + 4], struct.unpack(">I", data[offset + 4:offset + 8])[0]
        entries[kind] = data[offset + 8:offset + length]
        offset += length
    assert offset == len(data)
    return entries


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_icon_files_are_valid():
    entries = read_icns(ROOT / "resources" / "icon.icns")
    assert png_size(entries[b"ic10"]) == (1024, 1024) and png_size(entries[b"ic07"]) == (128, 128)
    assert png_size((ROOT / "resources" / "icon.png").read_bytes()) == (512, 512)
    assert (ROOT / "resources" / "icon.svg").is_file()


def test_make_icon_renders_png_and_icns(tmp_path):
    result = subprocess.run([PY, str(ROOT / "resources" / "make_icon.py"), "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 0, result.stderr
    assert png_size((tmp_path / "icon.png").read_bytes()) == (512, 512)
    entries = read_icns(tmp_path / "icon.icns")
    assert {png_size(png)[0] for png in entries.values()} == {16, 32, 64, 128, 256, 512, 1024}


def test_finished_bundle_check_and_metallib_placement(bundle_setup, tmp_path):
    bundle = make_fake_bundle(bundle_setup, tmp_path)
    problems = bundle_setup.bundle_problems(bundle)
    assert "no libqcocoa.dylib anywhere in the bundle" in problems and "no libmlx.dylib anywhere in the bundle" in problems
    assert not any(p.startswith("missing") for p in problems)  # every data file landed where DATA_FILES says
    # what py2app leaves: the mlx package with its metallib, libmlx.dylib moved to Frameworks
    mlx_lib = bundle / "Contents/Resources/lib/python3.11/mlx/lib"
    mlx_lib.mkdir(parents=True)
    (mlx_lib / "mlx.metallib").write_bytes(b"metal kernels")
    (mlx_lib.parent / "core.cpython-311-darwin.so").write_bytes(b"")
    frameworks = bundle / "Contents/Frameworks"
    frameworks.mkdir()
    (frameworks / "libmlx.dylib").write_bytes(b"")
    (bundle / "Contents/Resources/qt_plugins/platforms").mkdir(parents=True)
    (bundle / "Contents/Resources/qt_plugins/platforms/libqcocoa.dylib").write_bytes(b"")
    assert bundle_setup.bundle_problems(bundle) == ["Contents/Frameworks/libmlx.dylib has no mlx.metallib beside it"]
    assert bundle_setup.place_metallib(bundle) == [frameworks]
    assert (frameworks / "mlx.metallib").read_bytes() == b"metal kernels"
    assert bundle_setup.bundle_problems(bundle) == []


# ---------------------------------------------------------------- the resource locator

def test_locator_from_the_source_checkout():
    assert resources.resources_dir() == ROOT / "resources"
    assert resources.resource_path("style.qss").is_file()
    for method, folder in resources.DEMO_DATASETS.items():
        assert resources.demo_dataset(method) == ROOT / "resources" / folder
        assert (resources.demo_dataset(method) / "train.jsonl").is_file()


def test_locator_in_a_simulated_app_bundle(bundle_setup, tmp_path, monkeypatch):
    bundle = make_fake_bundle(bundle_setup, tmp_path)
    contents = bundle / "Contents" / "Resources"
    monkeypatch.setattr(sys, "frozen", "macosx_app", raising=False)
    monkeypatch.setenv("RESOURCEPATH", str(contents))
    assert resources.resources_dir() == contents
    assert resources.demo_dataset("dpo") == contents / "demo_preference"
    assert (resources.demo_dataset("grpo") / "train.jsonl").is_file()
    assert resources.resource_path("icon.png").is_file()
    monkeypatch.delattr(sys, "frozen")  # RESOURCEPATH alone (not frozen) is ignored
    assert resources.resources_dir() == ROOT / "resources"


def test_locator_names_every_place_it_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "candidates", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError, match="a, .*b"):
        resources.resources_dir()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (the build writes build/ and *.egg-info)."""
    work = tmp_path_factory.mktemp("pkg-work")
    source = copy_source_tree(work / "src")
    result = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                             "-w", str(work / "dist")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (found,) = (work / "dist").glob("fine_tune_studio-*.whl")
    return found


def test_wheel_ships_the_resources_inside_trainer_core(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = resources.shipped_files(ROOT / "resources")
    assert shipped, "SHIPPED matches nothing"
    for relative in shipped:
        assert f"trainer_core/_resources/{relative.as_posix()}" in names, relative
    tops = {name.split("/")[0] for name in names}
    assert tops == {"app", "trainer_core", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}


def test_locator_from_an_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    result = subprocess.run([PY, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import trainer_core.resources as r; "
             "print(r.__file__); print(r.resources_dir()); print(r.demo_dataset('dpo'))")
    # -S: no site-packages, hence no editable install of the checkout; only the stdlib and the target
    result = subprocess.run([PY, "-S", "-c", probe, str(target)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module, found, demo = result.stdout.split("\n")[:3]
    assert Path(module).is_relative_to(target)
    assert Path(found) == target / "trainer_core" / "_resources"
    assert (Path(demo) / "train.jsonl").is_file() and Path(demo).name == "demo_preference"


# ---------------------------------------------------------------- first launch of the bundle

def test_first_launch_of_the_bundle_writes_only_to_user_folders(bundle_setup, tmp_path):
    """The real window, started as inside the .app (frozen, RESOURCEPATH), then quit by a timer."""
    bundle = make_fake_bundle(bundle_setup, tmp_path / "Applications")
    before = snapshot(bundle)
    home = tmp_path / "home"
    driver = (
        "import sys; sys.frozen = 'macosx_app'\n"
        "from PySide6.QtCore import QTimer\n"
        "from app.__main__ import create_application, default_config, main\n"
        "application = create_application()\n"
        "print('DATA', default_config().data, flush=True)\n"
        "QTimer.singleShot(2500, application.quit)\n"
        "raise SystemExit(main([]))\n")
    env = {**os.environ, "FINETUNE_STUDIO_HOME": str(home), "QT_QPA_PLATFORM": "offscreen",
           "RESOURCEPATH": str(bundle / "Contents" / "Resources")}
    result = subprocess.run([PY, "-c", driver], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"DATA {bundle / 'Contents' / 'Resources' / 'demo_data'}" in result.stdout
    for folder in (home / "runs", home / "settings", home / "logs"):
        assert folder.is_dir(), folder
    log_text = (home / "logs" / "fine-tune-studio.log").read_text(encoding="utf-8")
    assert "finetune-studio started" in log_text and "app bundle" in log_text
    assert snapshot(bundle) == before, "the app wrote inside its bundle"


# ---------------------------------------------------------------- the CLI entry point

@pytest.mark.parametrize("method, folder", [("lora", "demo_data"), ("dpo", "demo_preference"), ("grpo", "demo_grpo")])
def test_cli_data_demo_is_the_shipped_demo_dataset(method, folder):
    from trainer_core.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--method", method, "--model", "demo", "--data", "demo"])
    assert config_from_args(args).data == str(resources.resource_path(folder))
