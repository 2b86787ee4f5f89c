"""Importing the package pulls in no heavy optional dependency (issue 15, item 6):
tensorflow-datasets is imported only by the loader that reads a tfds folder. No module of the
package imports itself back through others (no import cycle)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from conftest import ROOT

_CHECK = """
import importlib, pkgutil, sys
import gtl_jax
for info in pkgutil.walk_packages(gtl_jax.__path__, "gtl_jax."):
    importlib.import_module(info.name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow_datasets", "tensorflow"))
print(len(list(pkgutil.walk_packages(gtl_jax.__path__, "gtl_jax."))), heavy)
"""


def test_importing_every_module_imports_no_tensorflow_datasets():
    out = subprocess.run(
        [sys.executable, "-c", _CHECK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert int(out[0]) > 20  # every module of the package, subpackages included
    assert out[1:] == ["[]"]


# --------------------------------------------------------------------------- import cycles


def _package_modules() -> dict[str, pathlib.Path]:
    """Every module of the package and its file: gtl_jax/ and configs/ (installed as
    gtl_jax.configs)."""
    modules = {}
    for folder, package in (
        (ROOT / "gtl_jax", "gtl_jax"),
        (ROOT / "configs", "gtl_jax.configs"),
    ):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _imported(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """The package's modules that ``name`` imports anywhere (inside functions too, and
    ``importlib.import_module("...")`` with a literal name). ``from a import b`` imports the
    module a.b if there is one, else the package a."""

    def owner(target: str) -> str | None:  # the longest module prefix of a dotted name
        parts = target.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            targets.append(node.args[0].value)
    return {m for m in map(owner, targets) if m is not None}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a self-import."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_the_package():
    modules = _package_modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    # The parser sees what it should: the layers, and imports inside functions.
    assert {"gtl_jax.cli", "gtl_jax.suite"} <= graph["gtl_jax.evolve"]
    assert {"gtl_jax.cli", "gtl_jax.suite"} <= graph["gtl_jax.inherit"]
    assert "gtl_jax.evolve" in graph["gtl_jax.study"]
    assert "gtl_jax.experiment" in graph["gtl_jax"]  # importlib.import_module, lazily
    for command in ("gtl_jax.evolve", "gtl_jax.inherit", "gtl_jax.study"):
        for layer in ("experiment", "config", "build", "workdir", "cli"):
            assert command not in graph[f"gtl_jax.{layer}"]
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from pkg import b\n")
    b = tmp_path / "b.py"
    b.write_text("import pkg.a\n")
    modules = {"pkg": tmp_path / "__init__.py", "pkg.a": a, "pkg.b": b}
    graph = {
        name: _imported(name, path, modules)
        for name, path in modules.items()
        if name != "pkg"
    }
    graph["pkg"] = set()
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_the_core_never_imports_the_runtime():
    # The pure core (evolution, its state and operators, descendants, population,
    # learngene, models, data) does not depend on how or where it is executed: the
    # runtime (executors, placement on devices, processes, checkpoints, stopping) is
    # passed in by the caller.
    modules = _package_modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for w in graph[todo.pop()] - seen:
                seen.add(w)
                todo.append(w)
        return seen

    core = ["gtl_jax.evolution", "gtl_jax.state", "gtl_jax.operators"]
    core += ["gtl_jax.descendants", "gtl_jax.population"]
    core += [m for m in modules if m.startswith(("gtl_jax.models", "gtl_jax.data"))]
    core.append("gtl_jax.learngene")
    assert "gtl_jax.evolution" in reachable("gtl_jax.executors.host")  # the check sees
    runtime = ("gtl_jax.executors", "gtl_jax.sharding", "gtl_jax.distributed")
    runtime += ("gtl_jax.checkpoint", "gtl_jax.stopping")
    assert "gtl_jax.sharding" in reachable("gtl_jax.executors.host")
    for module in core:
        imported = {m for m in reachable(module) if m.startswith(runtime)}
        assert not imported, (module, imported)
