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


def test_small_n_study_keeps_every_rows_out_of_fold_predictions_and_the_default_gate(
        tiny_model_dir, tmp_path, empty_memory):
    from benchmarks.studies import gate_small_n

    task = benchmark_task(120, 30, seed=4)
    ctx = Context(tiny_model_dir, tmp_path, max_length=64)
    rows = np.arange(10, 90)
    # fit_once raises if the rows were not cross-fitted, if its arrays do not
    # rebuild the model's test predictions, or if its "z1" rule is not the gate.
    arrays = gate_small_n.fit_once(ctx, task, rows, 0, latent_dim=16, n_heads=2,
                                   max_epochs=3)
    assert int(arrays["n_folds"]) == 5
    for name in ("oof_anchor", "oof_head", "target"):
        assert arrays[name].shape == (len(rows), 1)
    assert arrays["test_head"].shape == arrays["test_ridge"].shape == (len(task.y_test), 1)
    # The five fold heads, each a head of its own (not the final one).
    assert arrays["test_head_folds"].shape == (5, len(task.y_test), 1)
    assert not np.allclose(arrays["test_head_folds"][0], arrays["test_head"])
    assert not np.allclose(arrays["test_head_folds"][0], arrays["test_head_folds"][1])
    np.testing.assert_array_equal(gate_small_n.weigh("z1", arrays), arrays["shrinkage"])
    np.testing.assert_array_equal(
        arrays["shrinkage"], stack_weights(arrays["oof_anchor"], arrays["oof_head"],
                                           arrays["target"])[1])
    # A stricter threshold keeps the same b or shuts the head out.
    for rule in ("z1.645", "z2"):
        b = gate_small_n.weigh(rule, arrays)
        assert b[0] in (0.0, arrays["shrinkage"][0])
    assert gate_small_n.weigh("ridge", arrays) == 0 and gate_small_n.weigh("head", arrays) == 1


def test_a_stricter_gate_lets_in_fewer_heads_and_never_another_weight():
    from benchmarks.studies import gate_small_n

    rng = np.random.default_rng(0)
    n, counts = 200, {rule: 0 for rule in gate_small_n.THRESHOLDS}
    for _ in range(60):
        anchor, signal = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
        target = anchor + rng.uniform(0, 0.3) * signal + rng.normal(size=(n, 1))
        arrays = dict(oof_anchor=anchor, oof_head=anchor + signal, target=target)
        b = {rule: float(gate_small_n.weigh(rule, arrays)[0])
             for rule in gate_small_n.THRESHOLDS}
        # Each threshold keeps the default's b or shuts the head out, and a
        # head a stricter threshold lets in passes every looser one.
        assert b["z1"] >= b["z1.645"] >= b["z2"]
        assert {b["z1.645"], b["z2"]} <= {0.0, b["z1"]}
        counts = {rule: counts[rule] + (b[rule] > 0) for rule in counts}
    # On weak signals the thresholds part ways.
    assert counts["z1"] > counts["z1.645"] > counts["z2"] > 0, counts
