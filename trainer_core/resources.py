"""Find the files Fine-Tune Studio ships (style sheet, icon, demo datasets).

One locator for the three ways the program runs, tried in this order:

1. inside "Fine-Tune Studio.app" (py2app sets `sys.frozen` and the environment
   variable RESOURCEPATH to Contents/Resources, where setup_py2app.py copies them);
2. from an installed wheel, which carries them as `trainer_core/_resources/`
   (setup.py maps the repository's `resources/` there);
3. from a source checkout (editable install included): `<repo>/resources/`.

`SHIPPED` lists what the wheel and the bundle carry (glob patterns relative to
`resources/`); setup.py and setup_py2app.py both read it, so they cannot drift.
Nothing here writes anywhere: user data lives under `trainer_core.paths`.
This module imports only the standard library (the build scripts load it by path).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHIPPED = (
    "style.qss",
    "icon.png",
    "demo_*/*.jsonl",
    "demo_*/README.md",
)

WHEEL_FOLDER = "_resources"  # inside the trainer_core package of an installed wheel

# which demo dataset suits each method's data kind
DEMO_DATASETS = {
    "sft": "demo_data",
    "lora": "demo_data",
    "diffusion": "demo_data",
    "dpo": "demo_preference",
    "grpo": "demo_grpo",
}


def candidates() -> list[Path]:
    """The places searched, most specific first (what an error message lists)."""
    places = []
    if getattr(sys, "frozen", False) and os.environ.get("RESOURCEPATH"):
        places.append(Path(os.environ["RESOURCEPATH"]))
    package = Path(__file__).resolve().parent
    places.append(package / WHEEL_FOLDER)
    places.append(package.parent / "resources")
    return places


def resources_dir() -> Path:
    """The folder holding the shipped resources; FileNotFoundError naming every place tried."""
    places = candidates()
    for place in places:
        if (place / "style.qss").is_file():
            return place
    raise FileNotFoundError("Fine-Tune Studio's resources were not found in any of: "
                            + ", ".join(str(p) for p in places) + ". The installation is incomplete; reinstall it.")


def resource_path(*parts: str) -> Path:
    """`resources_dir() / parts...` (the path may not exist: callers check what they need)."""
    return resources_dir().joinpath(*parts)


def demo_dataset(method: str = "sft") -> Path:
    """The demo dataset folder (train.jsonl + valid.jsonl) for `method`'s data kind."""
    return resource_path(DEMO_DATASETS.get(method, "demo_data"))


def shipped_files(root: Path) -> list[Path]:
    """Every file under `root` that SHIPPED names, sorted (relative paths)."""
    found = {path.relative_to(root) for pattern in SHIPPED for path in root.glob(pattern) if path.is_file()}
    return sorted(found)
