"""The package's layering, read from its source: no import cycles (function-local imports included), no reaching
into another module's private names, and each layer importing only the layers below it."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dale_langevin"
# Lower layers first; a module may import its own layer and those before it.
LAYERS = (
    ("dale_langevin.checks",),
    ("dale_langevin.processes", "dale_langevin.losses", "dale_langevin.samplers", "dale_langevin.distillation"),
    ("dale_langevin.nets", "dale_langevin.cpu"),
    ("dale_langevin.pipeline",),
    ("dale_langevin.evaluation",),
    ("dale_langevin.main", "dale_langevin.demo", "dale_langevin"),
)


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


MODULES = _modules()


def _imports(name: str) -> tuple[set[str], list[str]]:
    """(modules of the package ``name`` imports, anywhere in it; its uses of other modules' private names)."""
    tree = ast.parse(MODULES[name].read_text())
    targets, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dale_langevin"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                target = full if full in MODULES else node.module
                targets.add(target)
                if full in MODULES:
                    aliases[a.asname or a.name] = full
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    private.append(f"from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dale_langevin"):
                    targets.add(a.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id] != name
        ):
            private.append(f"{node.value.id}.{node.attr}")
    return {t for t in targets if t in MODULES and t != name}, private


GRAPH = {name: _imports(name)[0] for name in MODULES}


def _layer(name: str) -> int:
    best = max(
        (prefix for layer in LAYERS for prefix in layer if name == prefix or name.startswith(prefix + ".")), key=len
    )
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def test_the_package_is_found():
    assert {"dale_langevin.samplers.registry", "dale_langevin.pipeline.workdir", "dale_langevin.main"} <= set(MODULES)


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_reach_ins(name):
    assert not _imports(name)[1]


def test_layers_import_only_downwards():
    upward = [
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        for b in targets
        if _layer(b) > _layer(a) and not (a == "dale_langevin" or b.startswith(a + "."))
    ]
    assert not upward, upward


def test_the_checker_sees_what_it_checks(tmp_path, monkeypatch):
    """A cycle and a private reach-in written on purpose are found (the tests above can fail)."""
    fake = {"dale_langevin.a": tmp_path / "a.py", "dale_langevin.b": tmp_path / "b.py"}
    fake["dale_langevin.a"].write_text("def f():\n    from dale_langevin import b\n    return b._hidden\n")
    fake["dale_langevin.b"].write_text("from dale_langevin.a import f\n")
    monkeypatch.setitem(globals(), "MODULES", {**MODULES, **fake})
    targets_a, private_a = _imports("dale_langevin.a")
    assert targets_a == {"dale_langevin.b"} and private_a == ["b._hidden"]
    assert _imports("dale_langevin.b")[0] == {"dale_langevin.a"}
