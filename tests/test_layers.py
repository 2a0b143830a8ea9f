import ast
from pathlib import Path

import umm_plugin

RANK = {"worlds": 0, "models": 1, "rewards": 2, "eval": 3, "algos": 3, "openrlhf": 4}  # eval: ShapesWorld reports
ROOT = Path(umm_plugin.__file__).parent


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], len(RANK)) if len(parts) > 1 and parts[0] == "umm_plugin" else -1


def test_lower_layers_never_import_higher_ones():
    bad = []
    files = list(ROOT.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        mod = "umm_plugin." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [(mod, n) for n in names if _layer(n) > _layer(mod)]
    assert bad == []
