"""The package's imports form no circle, neither at module level nor inside functions.

Imports under ``if TYPE_CHECKING:`` never run and do not count. A module-level circle can leave
a module half-initialised; a function-level one is a dependency circle all the same (each module
needs the other), so both are checked.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = "cprfl_zoo"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements executed at import time (not in functions or TYPE_CHECKING blocks)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.ClassDef):
            found += _module_level_imports(node.body)  # a class body runs at import time
        elif isinstance(node, (ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody"):
                found += _module_level_imports(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                found += _module_level_imports(handler.body)
    return found


def _all_imports(
    body: list[ast.stmt], *, type_checking: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, in functions too (under ``if TYPE_CHECKING:`` if asked)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            found += _all_imports(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                found += _all_imports([child], type_checking=type_checking)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """Package modules a statement imports (``from . import x`` names the submodule x)."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = {source} | {f"{source}.{alias.name}" for alias in node.names}
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def import_graph(*, in_functions: bool = False, type_checking: bool = False) -> dict[str, set[str]]:
    """Module name -> package modules it imports (at module level, or anywhere).

    ``type_checking`` also counts the imports under ``if TYPE_CHECKING:`` (with
    ``in_functions``): a circle a type checker must resolve is a design circle all the same.
    """
    paths = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        if in_functions:
            imports = _all_imports(tree.body, type_checking=type_checking)
        else:
            imports = _module_level_imports(tree.body)
        for node in imports:
            edges |= {t for t in _targets(node, module, is_package) if t in paths}
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_reads_module_level_imports_only() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from .x import y\n"
        "if TYPE_CHECKING:\n    from .hidden import z\n"
        "def f():\n    from .lazy import w\n"
        "try:\n    from . import tried\nexcept ImportError:\n    pass\n"
    )
    found = set()
    for node in _module_level_imports(tree.body):
        found |= _targets(node, f"{PACKAGE}.mod", is_package=False)
    assert found == {f"{PACKAGE}.x", f"{PACKAGE}.x.y", PACKAGE, f"{PACKAGE}.tried"}
    everywhere = set()
    for node in _all_imports(tree.body):
        everywhere |= _targets(node, f"{PACKAGE}.mod", is_package=False)
    assert everywhere == found | {f"{PACKAGE}.lazy", f"{PACKAGE}.lazy.w"}


def test_graph_sees_the_package_modules() -> None:
    graph = import_graph()
    assert {f"{PACKAGE}.model", f"{PACKAGE}.hub", f"{PACKAGE}.text"} <= set(graph)
    assert f"{PACKAGE}.model" in graph[f"{PACKAGE}.factory"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("module-level import cycle: " + " -> ".join(cycle))


def test_no_import_cycle_through_functions() -> None:
    cycle = find_cycle(import_graph(in_functions=True))
    if cycle:
        pytest.fail("import cycle (counting imports inside functions): " + " -> ".join(cycle))


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("hub", "model"),
        ("checkpoint", "model"),
        ("deploy", "model"),
        ("text", "model"),
        ("classes", "model"),
        ("head_config", "model"),
    ],
)
def test_named_circles_are_gone(module: str, forbidden: str) -> None:
    """The circles of issue 12 (model <-> hub, model <-> deploy, model <-> text) stay cut."""
    graph = import_graph(in_functions=True, type_checking=True)
    name = f"{PACKAGE}.{module}"
    inside = {m for m in graph if m == name or m.startswith(name + ".")}
    assert inside, f"no module {name}"
    assert all(f"{PACKAGE}.{forbidden}" not in graph[m] for m in inside)


def test_no_import_cycle_even_through_type_checking_imports() -> None:
    cycle = find_cycle(import_graph(in_functions=True, type_checking=True))
    if cycle:
        pytest.fail("import cycle (counting TYPE_CHECKING imports): " + " -> ".join(cycle))


def test_model_imports_its_collaborators_at_module_level() -> None:
    assert {f"{PACKAGE}.hub", f"{PACKAGE}.deploy"} <= import_graph()[f"{PACKAGE}.model"]


def _text_modules() -> dict[str, ast.Module]:
    folder = PACKAGE_DIR / "text"
    return {
        _module_name(p): ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        for p in sorted(folder.glob("*.py"))
        if p.name != "__init__.py"
    }


def test_only_the_text_tower_imports_open_clip() -> None:
    modules = _text_modules()
    assert {f"{PACKAGE}.text.{m}" for m in ("encoder", "encode", "tower", "cache")} <= set(modules)
    users = set()
    for module, tree in modules.items():
        for node in _all_imports(tree.body):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if any((n or "").split(".")[0] == "open_clip" for n in names):
                users.add(module)
    assert users == {f"{PACKAGE}.text.tower"}


def _in_cli(module: str) -> bool:
    return module == f"{PACKAGE}.cli" or module.startswith(f"{PACKAGE}.cli.")


def test_no_library_module_imports_the_cli() -> None:
    """``cprfl_zoo.cli`` is the top: it imports the library, nothing in the library imports it."""
    graph = import_graph(in_functions=True)
    assert {f"{PACKAGE}.cli", f"{PACKAGE}.cli._common"} <= set(graph)
    for module, edges in graph.items():
        if not _in_cli(module):
            assert not {e for e in edges if _in_cli(e)}, module


def test_the_cli_imports_only_light_modules_at_import_time() -> None:
    """Building the parser stays cheap: torch, open_clip and the model load inside functions."""
    graph = import_graph()
    cli_modules = {m for m in graph if _in_cli(m)}
    assert {
        f"{PACKAGE}.cli.{m}" for m in ("embed", "convert", "export", "inference")
    } <= cli_modules
    light = {f"{PACKAGE}._version", f"{PACKAGE}.cli_args"}
    for module in sorted(cli_modules):
        assert {m for m in graph[module] if not _in_cli(m)} <= light, module
        path = PACKAGE_DIR.parent.joinpath(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _module_level_imports(tree.body):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [] if node.level else [node.module or ""]
            assert not any(n.split(".")[0] in {"torch", "open_clip", "timm"} for n in names), module


# ---------------------------------------------------------------------- import cost, in a fresh
# interpreter: the loss and the metrics drop into other projects at the cost of torch alone.
HEAVY = ("timm", "open_clip", "torchvision", "huggingface_hub")


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter that imports this checkout's package; its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "statement",
    [
        "import cprfl_zoo",
        "from cprfl_zoo.losses import AsymmetricLoss, ASLSingleLabel",
        "import cprfl_zoo.metrics",
        "from cprfl_zoo import AsymmetricLoss, __version__",
    ],
)
def test_light_imports_leave_the_heavy_libraries_out(statement: str) -> None:
    out = _fresh_python(f"""
        import sys
        {statement}
        print(" ".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert out.split() == [], f"{statement} imported {out.strip()}"


def test_timm_imported_after_the_package_knows_the_models() -> None:
    out = _fresh_python("""
        import sys
        import cprfl_zoo
        assert "timm" not in sys.modules
        import timm, torch
        from cprfl_zoo import _timm_registration
        model = timm.create_model(
            "cprfl", backbone="test_resnet", class_names=["cat", "dog", "car"],
            text_embeddings=torch.randn(3, 16), pretrained=False,
            embed_dim=32, num_heads=2, head_dim=8, mlp_hidden_dim=24,
        )
        print(type(model).__name__, model.eval()(torch.randn(1, 3, 32, 32)).shape[-1])
        print(any(type(f).__module__ == _timm_registration.__name__ for f in sys.meta_path))
    """)
    assert out.split() == ["CPRFL", "3", "False"]  # and the import hook has removed itself


@pytest.mark.parametrize(
    "statements",
    [
        "import timm; import cprfl_zoo",  # timm first: registered at once
        "from cprfl_zoo.model import CPRFL; import timm",  # timm imported from inside our module
        "import cprfl_zoo.losses; import timm.layers",  # a timm submodule first
        "import cprfl_zoo; cprfl_zoo.create_cprfl; import timm",
    ],
)
def test_the_models_are_registered_whatever_the_import_order(statements: str) -> None:
    out = _fresh_python(f"""
        {statements}
        import timm
        print(sorted(timm.list_models("cprfl*")))
    """)
    assert "'cprfl_resnet50'" in out and "'cprfl'" in out


def test_the_package_names_load_on_first_use() -> None:
    import cprfl_zoo
    from cprfl_zoo.losses import AsymmetricLoss
    from cprfl_zoo.model import CPRFL

    assert cprfl_zoo.CPRFL is CPRFL and cprfl_zoo.AsymmetricLoss is AsymmetricLoss
    assert set(cprfl_zoo.__all__) <= set(dir(cprfl_zoo))
    assert all(getattr(cprfl_zoo, name) is not None for name in cprfl_zoo.__all__)
    assert cprfl_zoo.text.encode_class_names is cprfl_zoo.encode_class_names  # a submodule
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        cprfl_zoo.nothing_here  # noqa: B018
