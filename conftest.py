"""Shared pytest fixtures: a tiny random Llama for tests and doctests.

Tests never touch the network: the hub is switched off before transformers
is imported. Nor the user's default disk cache: it is off unless a test
points ``RELISH_STATES_DIR`` at a directory of its own (the tests that
count backbone passes expect states to be computed afresh).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["RELISH_STATES_DIR"] = "off"
sys.path.insert(0, str(Path(__file__).parent / "tests"))

import pytest  # noqa: E402

from tiny import build_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Directory of a tiny random Llama + byte-level BPE tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _doctest_namespace(request, doctest_namespace):
    # Only doctests need the model; building it for every test is wasted work.
    if isinstance(request.node, pytest.DoctestItem):
        doctest_namespace["tiny_model_dir"] = request.getfixturevalue("tiny_model_dir")


@pytest.fixture
def empty_memory():
    """The process's memory cache, emptied before and after the test."""
    from sklearn_relish.cache import MEMORY_CACHE

    MEMORY_CACHE.clear()
    yield MEMORY_CACHE
    MEMORY_CACHE.clear()
