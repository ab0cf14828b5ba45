"""The package's shape: which modules import which (docs/developers.rst)."""

import runpy
from pathlib import Path

GRAPH = runpy.run_path(str(Path(__file__).resolve().parent.parent / "docs" / "import_graph.py"))


def test_no_two_modules_import_each_other():
    graph = GRAPH["edges"]()
    assert GRAPH["two_way"](graph) == []
    # Persistence rebuilds a model from the class it is given and the
    # stages' public functions, never from the estimator module.
    assert "estimator" not in graph["persistence"]
    # The lower layers know nothing of fitting or the estimator.
    for low in ("head", "training", "anchor", "backbone", "cache", "layers", "storage"):
        assert not {"estimator", "fitting"} & set(graph[low]), low


def test_the_graph_sees_imports_inside_functions(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "b.py").write_text("from . import a\n")
    graph = GRAPH["edges"](tmp_path)
    assert graph == {"a": ["b"], "b": ["a"]}
    assert GRAPH["two_way"](graph) == [("a", "b")]
