"""Over-long prompts in the benchmarks: every method reads the prompts that
``RelishRegressor`` shortened, and the truncation study counts what cutting
a prompt's end would lose."""

import warnings

import numpy as np
from transformers import AutoTokenizer

from benchmarks.baselines import Context, _relish
from benchmarks.tasks import Task
from benchmarks.studies.truncation import lost_fields

TEMPLATE = "Source: {0}\nTranslation: {1}\nScore:"
LONG = "the quick brown fox jumps over the lazy dog, " * 12
HEAD = dict(max_epochs=2, latent_dim=16, n_heads=2, batch_size=4)


def test_benchmark_baselines_read_the_states_relish_encoded(tiny_model_dir, tmp_path):
    """The ridge and MLP baselines must see the same (shortened) prompts as
    RelishRegressor, or they would compare methods on different inputs."""
    X = np.array([[LONG, "a good film"], [LONG, "an awful plot"], ["short", "great"],
                  ["tiny", "bad"]], dtype=object)
    y = np.array([1.0, -1.0, 2.0, -2.0])
    task = Task("pairs", X, y, X[:2], y[:2], TEMPLATE, (0, 1), "y", y)
    ctx = Context(tiny_model_dir, tmp_path / "cache", max_length=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _relish(ctx, task, 0, layer=ctx.layer, **HEAD).fit(task.X_train, task.y_train)
    backbone = ctx.load_backbone()
    before = backbone.n_texts_encoded
    features = ctx.features(task, "train")
    assert backbone.n_texts_encoded == before          # every prompt was cached
    assert not np.allclose(features["last"][0], features["last"][1])


def test_the_truncation_benchmark_counts_what_an_end_cut_loses(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fields = np.array([["short", "good"], [LONG, "good"], ["short", LONG]], dtype=object)
    over, lost = lost_fields(tokenizer, fields, TEMPLATE, max_length=40)
    assert over.tolist() == [False, True, True]
    assert lost.tolist() == [False, True, False]   # the second text starts past 40 tokens
