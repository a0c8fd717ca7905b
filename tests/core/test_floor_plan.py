"""The floor plan (ARCHITECTURE.md): which package may import which, no import cycles, small modules.

trainer_core's packages are the stages of a run and import downwards only:

    contracts (config, errors, paths, resources)
      <- hub <- models <- data <- training <- methods <- generation <- export
                                  ^-- distributed (joins and launches; the loop's reductions are training's)
      <- entry points (runner, cli, launch, logging_setup, __main__): may import everything

app's rooms sit on trainer_core and on `app.common` / `app.settings`; the shell (main_window and
the other top-level modules) wires the rooms together.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = {"config", "errors", "paths", "resources"}
CORE_ALLOWED = {
    "hub": set(),
    "models": {"hub"},
    "data": {"hub", "models"},
    "training": {"hub", "models", "data"},
    "methods": {"hub", "models", "data", "training"},
    "generation": {"hub", "models", "data", "training", "methods"},
    "export": {"hub", "models", "data", "training", "methods", "generation"},
    "distributed": {"hub", "models", "data", "training"},
}
CORE_ENTRY = {"runner", "cli", "launch", "logging_setup", "__main__"}
APP_BASE = {"common", "settings"}
APP_ALLOWED = {
    "common": {"settings"},
    "training": set(),
    "checkpoints": set(),
    "runs": set(),
    "distributed": {"training"},
    "setup": {"distributed"},
}
MAX_LINES = 400
MAX_TOP_LEVEL = 10


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, top_only: bool = False) -> set[str]:
    """Absolute module names `path` imports (`from a.b import c`: a.b, and a.b.c when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return names


def area(name: str) -> tuple[str, str] | None:
    """('trainer_core' | 'app', the package or top-level module directly under it)."""
    parts = name.split(".")
    if parts[0] not in ("trainer_core", "app"):
        return None
    return parts[0], parts[1] if len(parts) > 1 else ""


def violation(importer: str, imported: str, packages: set[str]) -> str | None:
    """Why `importer` may not import `imported` (module names), or None when it may."""
    src, dst = area(importer), area(imported)
    if src is None or dst is None:
        return None
    (src_root, src_part), (dst_root, dst_part) = src, dst
    if src_root == "trainer_core" and dst_root == "app":
        return "trainer_core never imports app"
    if src_root == "trainer_core":
        if dst_part in ("", *CONTRACTS) or src_part == dst_part:
            return None
        if src_part in CORE_ENTRY:
            return None
        if dst_part in CORE_ENTRY:
            return f"{dst_part} is an entry point: only entry points import it"
        if src_part == "" and imported in ("trainer_core.models", "trainer_core.models.native_blas",
                                           "trainer_core.models.cuda_graphs"):
            return None  # the OpenBLAS preload and MLX's CUDA graph size, before anything imports mlx
        if src_part in CONTRACTS:
            return f"contract module {src_part} imports {dst_part}"
        if dst_part not in CORE_ALLOWED.get(src_part, set()):
            return f"trainer_core.{src_part} may not import trainer_core.{dst_part}"
        return None
    if dst_root == "trainer_core" or dst_part in ("",) or src_part == dst_part:
        return None
    if src_part not in packages:  # the shell wires the rooms together
        return None
    if dst_part in APP_BASE and src_part != "common" or dst_part in APP_ALLOWED.get(src_part, set()):
        return None
    return f"app.{src_part} may not import app.{dst_part}"


def sources(root: str) -> list[Path]:
    return sorted(p for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)


MODULES = {module_name(p) for root in ("trainer_core", "app") for p in sources(root)}


def packages_of(root: str) -> set[str]:
    return {p.name for p in (REPO / root).iterdir() if (p / "__init__.py").exists()}


@pytest.mark.parametrize("root", ["trainer_core", "app"])
def test_packages_import_in_the_allowed_direction(root):
    packages = packages_of(root)
    assert packages >= (set(CORE_ALLOWED) if root == "trainer_core" else set(APP_ALLOWED))
    found = {}
    for path in sources(root):
        importer = module_name(path)
        for imported in imports_of(path):
            why = violation(importer, imported, packages)
            if why:
                found[f"{importer} -> {imported}"] = why
    assert not found, found


def test_the_direction_check_can_fail():
    packages = packages_of("trainer_core") | packages_of("app")
    assert violation("trainer_core.models.loading", "trainer_core.training.loop", packages)
    assert violation("trainer_core.training.loop", "trainer_core.methods.grpo", packages)
    assert violation("trainer_core.methods.sft", "trainer_core.runner", packages)
    assert violation("trainer_core.config", "trainer_core.models.loading", packages)
    assert violation("trainer_core.data.loading", "app.common.tasks", packages)
    assert violation("app.common.tasks", "app.training.worker", packages)
    assert violation("app.training.worker", "app.setup.pane", packages)
    assert violation("trainer_core.generation.generate", "trainer_core.methods.diffusion", packages) is None
    assert violation("app.main_window", "app.setup.pane", packages) is None


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph` (module -> modules it imports at load time), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_at_load_time():
    modules = {module_name(p): p for root in ("trainer_core", "app") for p in sources(root)}
    graph = {name: {m for m in imports_of(path, top_only=True)  # a module's own parent packages load first anyway
                    if m in modules and m != name and not name.startswith(m + ".")}
             for name, path in modules.items()}
    assert cycle(graph) is None, cycle(graph)
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("root", ["trainer_core", "app"])
def test_small_modules_and_a_short_top_level(root):
    long = {str(p.relative_to(REPO)): n for p in sources(root)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    top = sorted(p.name for p in (REPO / root).glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top


def test_every_package_says_what_it_holds_and_may_import():
    for root in ("trainer_core", "app"):
        for package in packages_of(root):
            doc = ast.get_docstring(ast.parse((REPO / root / package / "__init__.py").read_text(encoding="utf-8")))
            assert doc and "May import" in doc, f"{root}/{package}/__init__.py needs a docstring saying what it may import"
