"""Sphinx configuration for sklearn-relish's documentation.

Build: ``pip install -e ".[docs]" && python -m sphinx -W -b html docs docs/_build/html``.
The gallery (``examples/``) runs on the bundled tweets with the default
backbone; ``-D plot_gallery=0`` builds without running it.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sklearn_relish  # noqa: E402

project = "sklearn-relish"
author = "sklearn-relish developers"
copyright = "2026, sklearn-relish developers"
release = version = sklearn_relish.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "relish_results",
]

exclude_patterns = ["_build", "benchmarks/generated/*.rst.txt", "Thumbs.db", ".DS_Store"]
templates_path = []
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Parameter types are prose ("int or None, default=3"), not cross-references.
numpydoc_xref_param_type = False
intersphinx_mapping = {}
suppress_warnings = ["config.cache"]

html_theme = "pydata_sphinx_theme"
html_title = "sklearn-relish"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path = []

sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "show_memory": False,
}


def _skip_scikit_learn_members(app, what, name, obj, skip, options):
    """Leave out what the estimator inherits from scikit-learn (``score``,
    the ``set_*_request`` methods): their docstrings point into
    scikit-learn's own documentation."""
    module = getattr(obj, "__module__", "") or ""
    if module.startswith("sklearn.") or name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_scikit_learn_members)
