"""What the import-linter contracts in pyproject.toml cannot say: no import circle anywhere
in `app/` (modules, and the packages of the layers), and no private `_module` imported from
outside its own package."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("app")


def circles(nodes: Iterable[str], edges: Callable[[str], set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), and the nodes that
    import themselves: each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        # iterative depth-first search: app/ has hundreds of modules
        work = [(node, iter(sorted(edges(node))))]
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges(child)))))
                    break
                if child in on_stack:
                    low[current] = min(low[current], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[current])
                if low[current] == index[current]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == current:
                            break
                    if len(component) > 1 or current in edges(current):
                        found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges, lambda n: edges[n]) == [["a", "b", "c"]]
    assert circles({"a": set()}, lambda n: set()) == []


def test_no_module_imports_itself_back(graph: grimp.ImportGraph) -> None:
    found = circles(graph.modules, graph.find_modules_directly_imported_by)
    assert found == [], f"import circles between modules: {found}"


PACKAGE_LEVELS = ["app", "app.api", "app.emulator"]
"""Whose children must not import each other in a circle, as packages (`app.api.gateway`
imports `app.api.common`, which must not import anything of `app.api.gateway` back)."""


@pytest.mark.parametrize("parent", PACKAGE_LEVELS)
def test_no_package_imports_its_sibling_back(graph: grimp.ImportGraph, parent: str) -> None:
    children = {c for c in graph.find_children(parent)}

    def child_of(module: str) -> str | None:
        for child in children:
            if module == child or module.startswith(child + "."):
                return child
        return None

    between: dict[str, set[str]] = {child: set() for child in children}
    for module in graph.modules:
        source = child_of(module)
        if source is None:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            target = child_of(imported)
            if target is not None and target != source:
                between[source].add(target)
    found = circles(children, lambda c: between[c])
    assert found == [], f"packages under {parent} that import each other: {found}"


def test_private_modules_stay_private(graph: grimp.ImportGraph) -> None:
    """A module named `_something` is imported only from inside its own package."""
    offenders = []
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            name = imported.rsplit(".", 1)[-1]
            if not name.startswith("_") or name.startswith("__"):
                continue
            package = imported.rsplit(".", 1)[0]
            if not module.startswith(package + "."):
                offenders.append(f"{module} -> {imported}")
    assert offenders == []
