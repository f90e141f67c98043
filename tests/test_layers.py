"""The package's import graph: no cycles, and no module imports a layer above its own.

Layers, lowest first (docs/internals.md draws them): a module may import its own layer's
modules and any lower layer's, never a higher one. Every import counts, also one inside a
function (a lazy import hides a cycle; it does not remove it) and one under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import md

SRC = Path(md.__file__).parent

# Lowest first. A module belongs to the longest prefix listed.
LAYERS: list[tuple[str, ...]] = [
    ("md", "md.errors", "md.config", "md.progress", "md.audit"),
    ("md.data", "md.stores"),
    ("md.models",),
    ("md.train",),
    ("md.teacher_train", "md.teacher_cache", "md.student_train", "md.eval", "md.tables"),
    ("md.deploy",),
    ("md.bench", "md.demo"),
    ("md.cli",),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str], source: str | None = None) -> set[str]:
    """The md modules `name` imports (a `from pkg import x` of a submodule names it)."""
    text = path.read_text() if source is None else source
    tree = ast.parse(text, filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("md"):
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer_of(name: str) -> int:
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_no_module_imports_a_higher_layer() -> None:
    edges = graph()
    unplaced = sorted(name for name in edges if layer_of(name) < 0)
    assert unplaced == [], f"modules in no layer (add them to LAYERS): {unplaced}"
    upward = sorted(
        f"{a} -> {b}" for a, bs in edges.items() for b in bs if layer_of(b) > layer_of(a)
    )
    assert upward == []


def test_the_checks_can_fail() -> None:
    assert cycles({"md.a": {"md.b"}, "md.b": {"md.c"}, "md.c": {"md.a"}, "md.d": set()}) == [
        ["md.a", "md.b", "md.c"]
    ]
    assert layer_of("md.models.heads.detection") < layer_of("md.train.distributed")
    source = "def f():\n    from md.train import distributed\n"
    tmp = SRC.parent / "md" / "models" / "x.py"
    found = imports_of("md.models.x", tmp, {"md.train", "md.train.distributed"}, source)
    assert found == {"md.train", "md.train.distributed"}  # a lazy import is an edge too
