"""The package's shape: no import cycles, one error tree, no test code in the wheel."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import packsync

PACKAGE = Path(packsync.__file__).parent
PROJECT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The packsync modules ``path`` imports, anywhere in it (imports only for type checking aside)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {module for module in found if module in modules and module != name}


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): _imports(path, modules) for path in paths}


def test_the_package_has_no_import_cycles() -> None:
    graph = _graph()
    assert "packsync.engine.sync" in graph and "packsync.engine.planner" in graph["packsync.engine.sync"], \
        "the walk finds the imports"
    visiting: list[str] = []
    done: set[str] = set()

    def walk(module: str) -> None:
        if module in visiting:
            cycle = visiting[visiting.index(module):] + [module]
            pytest.fail("import cycle: " + " → ".join(cycle))
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            walk(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        walk(module)


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("packsync.engine.planner", {"packsync.remote", "packsync.state", "packsync.sources", "packsync.daemon"}),
    ("packsync.engine.pull_plan", {"packsync.remote", "packsync.state", "packsync.sources", "packsync.daemon",
                                   "packsync.engine.pull", "packsync.views"}),
    ("packsync.sources", {"packsync.remote", "packsync.state", "packsync.engine", "packsync.daemon",
                          "packsync.config"}),
    # The config is read above the sources: it checks patterns in their language and names their labels.
    ("packsync.config", {"packsync.remote", "packsync.state", "packsync.engine", "packsync.daemon", "packsync.views",
                         "packsync.web", "packsync.app", "packsync.cli"}),
    ("packsync.remote", {"packsync.state", "packsync.engine", "packsync.sources", "packsync.daemon"}),
    ("packsync.state", {"packsync.remote", "packsync.engine", "packsync.sources", "packsync.daemon"}),
    ("packsync.views", {"packsync.daemon", "packsync.app", "packsync.engine", "packsync.remote"}),
    ("packsync.engine", {"packsync.daemon", "packsync.app", "packsync.cli", "packsync.web", "packsync.views"}),
    ("packsync.mappings", {"packsync.remote", "packsync.engine", "packsync.sources", "packsync.views",
                           "packsync.daemon", "packsync.web"}),
    ("packsync.web", {"packsync.daemon", "packsync.app", "packsync.cli", "packsync.remote"}),
])
def test_layers_depend_only_downwards(layer: str, forbidden: set[str]) -> None:
    graph = _graph()
    offenders = {(module, imported) for module, imports in graph.items() if module.startswith(layer)
                 for imported in imports if any(imported.startswith(f) for f in forbidden)
                 and imported not in ALLOWED_BELOW.get(layer, set())}
    assert offenders == set()


#: What a layer may import from one it must not otherwise: the config checks ``bandwidth_limit`` in the syntax
#: ``remote/bandwidth.py`` owns (as it checks patterns in the sources'), a module that imports no other part.
ALLOWED_BELOW = {"packsync.config": {"packsync.remote.bandwidth"}}


def test_what_a_layer_may_import_from_below_imports_no_other_part() -> None:
    graph = _graph()
    assert {module: graph[module] for allowed in ALLOWED_BELOW.values() for module in allowed} == \
        {module: set() for allowed in ALLOWED_BELOW.values() for module in allowed}


#: The libraries that speak to the database: ``packsync.state`` alone may import them.
DATABASE_LIBRARIES = {"sqlite3", "sqlalchemy", "sqlmodel"}


def test_only_the_state_imports_a_database_library() -> None:
    """Every other part asks the state (``packsync.state``) and runs no SQL of its own: the state can move
    to another database, or change its schema, without any of them knowing."""
    state = PACKAGE / "state"
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(state):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{_module_name(path)} imports {name}" for name in names
                          if name.split(".")[0] in DATABASE_LIBRARIES]
    assert "packsync.state.sqlite" in {_module_name(p) for p in state.glob("*.py")}, "the walk knows the state"
    assert offenders == []


def test_every_exception_packsync_raises_is_in_the_errors_module() -> None:
    """One error tree: an exception class defined anywhere else would escape the documented exit codes.
    The sandbox is the vendor's server, not packsync, and is left out."""
    strays = []
    for info in pkgutil.walk_packages(packsync.__path__, "packsync."):
        if info.name.startswith("packsync.sandbox") or info.name == "packsync.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name \
                    and info.name != "packsync.errors":
                strays.append(f"{info.name}.{name}")
    assert strays == []


def test_the_wheel_holds_no_test_code(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                             "-w", str(tmp_path), str(PROJECT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("packsync-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "packsync/engine/planner.py" in names
    assert {"packsync/web/templates/page.html", "packsync/web/static/app.js", "packsync/web/static/style.css"} \
        <= set(names), "the page's templates and assets ship in the wheel"
    assert [n for n in names if "test" in n.lower() or n.startswith(("tests/", "bench/"))] == []


def test_the_engine_and_the_views_never_name_a_kind_of_source() -> None:
    """Sources are known by their interface (``kind``, ``gone``, ``unavailable``, ``listing``): no
    ``isinstance`` of a source class in the engine, no label prefix outside ``packsync.sources``."""
    needles = ("isinstance(source", "FolderSource)", "GoneFolder)", "AstriaSource)", 'startswith("astria:")')
    offenders = []
    for folder in ("engine", "views", "web"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            offenders += [f"{_module_name(path)}: {needle}" for needle in needles if needle in text]
    assert offenders == []


#: Where no kind of source may be named: a new kind is one module in ``packsync/sources`` (and its client and
#: sandbox routes), so nothing that plans, runs, records or shows a sync may know one kind from another.
KIND_BLIND = ("engine", "views", "web", "daemon", "state", "app.py")
#: How code names a remote kind: its mapping keys, the tune's label prefix (the word boundary lets
#: ``astria_packs`` — the ``astria packs`` command's printers — pass).
KIND_NAMES = re.compile(r"\bastria_pack\b|\bastria_tune\b|\"astria-tune\"")


def _kind_blind_files() -> list[Path]:
    return [path for part in KIND_BLIND
            for path in ([PACKAGE / part] if part.endswith(".py") else sorted((PACKAGE / part).rglob("*.py")))]


def test_no_module_above_the_sources_names_a_kind_of_source() -> None:
    """The planner, executor, daemon, state and views ask a source what it is (``kind``, ``label``,
    ``expires_at``, an item's ``detail``), never which key a mapping used to name it."""
    files = _kind_blind_files()
    assert PACKAGE / "app.py" in files and PACKAGE / "engine" / "sync.py" in files, "the walk finds the modules"
    offenders = [f"{path.relative_to(PROJECT)}:{number}: {match[0]}" for path in files
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 for match in KIND_NAMES.finditer(line)]
    assert offenders == []


def test_no_module_above_the_sources_imports_a_kind_of_source_s_module() -> None:
    """Only ``sources/kinds.py`` lists the kinds; the rest reach a kind through it."""
    graph = _graph()
    blind = {_module_name(path) for path in _kind_blind_files()}
    assert "packsync.app" in blind and "packsync.state.unit" in blind
    offenders = {(module, imported) for module in blind for imported in graph[module]
                 if imported.startswith("packsync.sources.astria_tune")}
    assert offenders == set()
