"""The package's import graph: no cycle between glip_d2's subpackages, text at the bottom."""

import ast
from pathlib import Path

import glip_d2

PACKAGE = Path(glip_d2.__file__).resolve().parent


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """(glip_d2 module imported, whether the import sits inside a function) of one file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("glip_d2."):
                yield t, id(node) in in_function


def _unit(module):
    """glip_d2.text.spans -> "text"; glip_d2.predictor -> "predictor"."""
    return module.split(".")[1]


def _graph():
    edges, deferred = {}, []
    for path in PACKAGE.rglob("*.py"):
        source = _module_name(path)
        for target, inside in _imports(path):
            if inside:
                deferred.append((source, target))
            if source.count(".") and _unit(target) != _unit(source):
                edges.setdefault(_unit(source), set()).add(_unit(target))
    return edges, deferred


def _cycle(edges):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_cycle_between_subpackages():
    edges, _ = _graph()
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"
    # The graph the layout promises (docs/DESIGN.md, "Module map").
    assert edges["modeling"] == {"text", "structures"}
    assert edges["data"] <= {"text", "structures"}
    assert edges["evaluation"] <= {"text", "structures"}
    assert "text" not in edges and "structures" not in edges


def test_no_deferred_glip_d2_imports():
    _, deferred = _graph()
    assert deferred == []


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
