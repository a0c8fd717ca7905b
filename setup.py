"""Wheel layout only (metadata, dependencies and entry points are in pyproject.toml).

The repository's `resources/` folder ships inside the wheel as the package data
folder `trainer_core/_resources/`, where `trainer_core.resources` finds it.
pyproject.toml cannot map a folder to a package while also discovering packages,
hence this file. Which resource files ship is `trainer_core.resources.SHIPPED`.
"""

import importlib.util
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _load_resources_module():
    spec = importlib.util.spec_from_file_location("_ft_resources", ROOT / "trainer_core" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resource_packages():
    """(packages, package_data) putting resources/ at trainer_core/_resources/ in the wheel."""
    resources = _load_resources_module()
    base = "trainer_core." + resources.WHEEL_FOLDER
    package_data = {}
    for relative in resources.shipped_files(ROOT / "resources"):
        folder = relative.parent
        package = ".".join([base, *folder.parts])
        package_data.setdefault(package, []).append(relative.name)
    return sorted(package_data), package_data, base


RESOURCE_PACKAGES, RESOURCE_DATA, RESOURCE_BASE = resource_packages()

setup(
    packages=find_packages(include=["app", "app.*", "trainer_core", "trainer_core.*"]) + RESOURCE_PACKAGES,
    package_dir={RESOURCE_BASE: "resources"},
    package_data=RESOURCE_DATA,
)
