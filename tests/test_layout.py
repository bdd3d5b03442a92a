"""The package layout (docs/ARCHITECTURE.md): imports go one way down the layers, no circles, no library
module imports the CLI, small files. Read from the source with ast (lazy imports inside functions count)."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src" / "frcnn"

# Top to bottom; a module may import its own subpackage and any lower layer. The bottom layer's
# packages are peers that import nothing of frcnn but utils and errors.
LAYERS = (
    ("cli",),
    ("reproduce",),
    ("config",),
    ("engine",),
    ("lit",),
    ("evaluation",),
    ("inference",),
    ("modeling",),
    ("layers", "data", "checkpoint", "utils", "weights", "errors"),
)
BOTTOM_MAY_IMPORT = {"utils", "errors"}
MAX_TOP_LEVEL_MODULES = 12
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def frcnn_imports(path: Path) -> set[str]:
    """Every frcnn module ``path`` imports (``from frcnn.x import y``: frcnn.x.y when that is a module)."""
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("frcnn")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("frcnn"):
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in modules else base)
    return found - {own}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): frcnn_imports(p) for p in SRC.rglob("*.py")}


def package_of(module: str) -> str:
    """frcnn.modeling.backbone.vgg -> modeling; frcnn.errors -> errors; frcnn -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(package: str) -> int:
    for rank, members in enumerate(LAYERS):
        if package in members:
            return rank
    raise AssertionError(f"package {package!r} is in no layer of tests/test_layout.py: place it in LAYERS")


def test_imports_go_down_the_layers():
    wrong = []
    for module, imported in import_graph().items():
        source = package_of(module)
        if not source:  # frcnn/__init__.py: the lazy `from frcnn import Detector`
            continue
        for target in imported:
            target_package = package_of(target)
            if target_package == source:
                continue
            if layer_of(source) == len(LAYERS) - 1:
                allowed = target_package in BOTTOM_MAY_IMPORT
            else:
                allowed = layer_of(target_package) > layer_of(source)
            if not allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer order of docs/ARCHITECTURE.md:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state[nxt] == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif state[nxt] == 0:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if state[start] == 0:
            visit(start, [start])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_no_library_module_imports_the_cli():
    offenders = [f"{m} -> {t}" for m, imported in import_graph().items() if package_of(m) != "cli"
                 for t in imported if package_of(t) == "cli"]
    assert not offenders, offenders


def test_few_modules_at_the_top_and_no_long_files():
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    long_files = [f"{p.relative_to(REPO_ROOT)}: {n} lines"
                  for folder in (REPO_ROOT / "src", REPO_ROOT / "scripts") for p in folder.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long_files, long_files


def test_the_checks_fail_on_a_wrong_import_and_a_circle(tmp_path, monkeypatch):
    """The rules above can fail: a modeling module importing the engine, which imports it back."""
    import tests.test_layout as layout

    fake = tmp_path / "frcnn"
    (fake / "modeling").mkdir(parents=True)
    (fake / "engine").mkdir()
    (fake / "modeling" / "m.py").write_text("def f():\n    from frcnn.engine import e\n")
    (fake / "engine" / "e.py").write_text("import frcnn.modeling.m\n")
    monkeypatch.setattr(layout, "SRC", fake)
    assert import_graph() == {"frcnn.modeling.m": {"frcnn.engine.e"}, "frcnn.engine.e": {"frcnn.modeling.m"}}
    with pytest.raises(AssertionError, match="frcnn.modeling.m -> frcnn.engine.e"):
        test_imports_go_down_the_layers()
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circles()
