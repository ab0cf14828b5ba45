"""``benchmarks.studies.gate``: the arrays it keeps rebuild the fitted
model's predictions, so every rule it scores is scored on that same head."""

import numpy as np

from benchmarks.baselines import Context
from benchmarks.studies import gate
from data_utils import benchmark_task
from sklearn_relish.anchor import stack_weights


def test_kept_arrays_rebuild_the_model_and_its_weight(tiny_model_dir, tmp_path, empty_memory):
    task = benchmark_task(240, 40, seed=3)
    ctx = Context(tiny_model_dir, tmp_path, max_length=64)
    # fit_once raises if its rebuilt split or prediction differ from the model's.
    arrays = gate.fit_once(ctx, task, 0, latent_dim=16, n_heads=2, max_epochs=3)
    n_valid = int(np.ceil(0.1 * len(task.y_train)))
    assert arrays["valid_target"].shape == arrays["valid_head"].shape == (n_valid, 1)
    assert arrays["test_head"].shape == arrays["test_ridge"].shape == (len(task.y_test), 1)
    # The estimator's weight is the study's "crossfit" rule on the kept arrays.
    np.testing.assert_allclose(gate.weigh("crossfit", arrays), arrays["shrinkage"])
    np.testing.assert_allclose(
        arrays["shrinkage"], stack_weights(arrays["valid_train_ridge"], arrays["valid_head"],
                                           arrays["valid_target"])[1])
    # The deployed ridge differs from the training rows' one, so its rules read other rows.
    assert not np.allclose(arrays["valid_loo"], arrays["valid_train_ridge"])
    assert gate.weigh("ridge", arrays) == 0 and gate.weigh("head", arrays) == 1
