"""The package's imports run one way: no module imports, even inside a function, one that imports it back."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wm_agent", "envs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in it (a package's __init__ counts for its submodules)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    modules = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name = _module_name(path)
        # importing a.b.c runs a/__init__ and a/b/__init__ too, but those are docstrings or the public API's
        # lazy table here, so only the named module counts
        graph[name] = _imports(path, modules) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the list of modules along it (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_envs_stand_alone():
    """envs/ is usable without wm_agent (wm_agent registers its own dream env)."""
    graph = import_graph()
    assert not any(dep.startswith("wm_agent") for name, deps in graph.items() if name.startswith("envs")
                   for dep in deps)


def test_models_import_no_layer_above_them():
    graph = import_graph()
    allowed = ("wm_agent.config", "wm_agent.sampling", "wm_agent.torch_utils", "wm_agent.models")
    for name, deps in graph.items():
        if name.startswith("wm_agent.models"):
            assert all(dep.startswith(allowed) for dep in deps), (name, deps)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


MAX_LINES = 500


def test_modules_stay_short_or_say_why():
    """One job per file: a module past MAX_LINES lines says in its docstring why it is long ("long because")."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") > MAX_LINES:
                docstring = ast.get_docstring(ast.parse(text)) or ""
                assert "long because" in docstring, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines"
