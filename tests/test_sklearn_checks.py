"""scikit-learn's own estimator checks.

The checks feed numeric arrays, so they run on a thin adapter that renders
each row of numbers as a text (``"0.12 -1.5 3"``) and hands it to
RelishRegressor on the tiny random Llama. Everything after the rendering --
prompt, backbone, cache, head, skorch training, the scikit-learn contract --
is the real estimator.
"""

import tempfile

import numpy as np
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted, validate_data

from sklearn_relish import RelishRegressor
from tiny import build_tiny_llama

TINY = build_tiny_llama(tempfile.mkdtemp(prefix="relish-checks-"))


class NumbersAsTextRegressor(RelishRegressor):
    """RelishRegressor on numeric rows, written out as text."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, y_numeric=True, multi_output=True)
        return super().fit(_as_text(X), y)

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return super().predict(_as_text(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = False
        tags.input_tags.two_d_array = True
        return tags


def _as_text(X):
    return [" ".join(f"{v:.3g}" for v in row) for row in np.asarray(X)]


def _estimator():
    return NumbersAsTextRegressor(backbone=TINY, latent_dim=16, n_heads=2, max_epochs=2,
                                  batch_size=8, max_length=128, prompt_template="{0}",
                                  random_state=0)


EXPECTED_FAILURES = {
    "check_regressors_train": (
        "asks for R^2 > 0.5 on numeric data after 2 epochs; a random tiny Llama "
        "reading numbers written as text cannot do that (the real backbone's "
        "learning is tested in test_estimator and test_real_backbone)"),
}


@parametrize_with_checks([_estimator()], expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
