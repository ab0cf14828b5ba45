"""Print the package's internal imports (``a -> b``: module ``a`` imports ``b``)
and any two modules that import each other; docs/developers.rst quotes it.

    python docs/import_graph.py
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sklearn_relish"


def edges(package=PACKAGE):
    """``{module: [modules of the package it imports]}``, every import
    counted, including those inside functions."""
    out = {}
    for path in sorted(package.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module
                            else [a.name for a in node.names])
        out[path.stem] = sorted(d for d in deps if d != path.stem and (package / f"{d}.py").exists())
    return out


def two_way(graph):
    return sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))


if __name__ == "__main__":
    graph = edges()
    for module, deps in graph.items():
        if deps:
            print(f"{module:12} -> {', '.join(deps)}")
    print("import each other:", two_way(graph) or "none")
