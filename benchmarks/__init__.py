"""Benchmarks of sklearn-relish; part of the repository, not of the package.

``python -m benchmarks.run`` compares RELISH with the LLM-regression
baselines; ``benchmarks.studies`` holds the one-off studies. Results go to
``benchmarks/results``.

Importing any benchmark switches the Hugging Face hub off (unless the
environment already sets ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``):
models and data are read from disk only. This happens here, before any
benchmark module imports transformers, which reads these at import.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
