import ast
from pathlib import Path

import umm_plugin

RANK = {"worlds": 0, "models": 1, "rewards": 2, "eval": 3, "algos": 3, "openrlhf": 4}  # eval: ShapesWorld reports
ROOT = Path(umm_plugin.__file__).parent
MODULES = {
    "umm_plugin." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for p in ROOT.rglob("*.py")
}


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], len(RANK)) if len(parts) > 1 and parts[0] == "umm_plugin" else -1


def _imports(path: Path) -> list[str]:
    """Every module name a file imports, at its top or inside a function (`from pkg import mod` names pkg.mod)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_lower_layers_never_import_higher_ones():
    assert len(MODULES) > 10
    bad = [(mod, n) for mod, path in MODULES.items() for n in _imports(path) if _layer(n) > _layer(mod)]
    assert bad == []


def find_cycle(graph: dict) -> list:
    """One import cycle of `graph` (module -> imported modules) as [a, b, ..., a], or [] if there is none."""
    state = {}  # module -> "open" while on the DFS stack, "done" after

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = "done"
        return []

    for mod in sorted(graph):
        if mod not in state and (found := visit(mod, [mod])):
            return found
    return []


def test_no_import_cycle_in_the_package():
    graph = {mod: {n for n in _imports(path) if n in MODULES and n != mod} for mod, path in MODULES.items()}
    assert graph["umm_plugin.openrlhf.plugin"]  # the graph sees imports
    assert find_cycle(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
