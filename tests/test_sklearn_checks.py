"""scikit-learn's own estimator checks.

The checks feed numeric arrays. RelishRegressor writes numbers into its
prompt (one ``"A: 0.12"`` line per column with the default template), so a
thin subclass only adds scikit-learn's numeric validation (finite values, 2-D
input) and rounds the numbers to keep the prompts short; it runs on the tiny
random Llama. Everything after that -- prompt, backbone, cache, head, skorch
training, the transformer face, the scikit-learn contract -- is the real
estimator.
"""

import tempfile

import numpy as np
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted, validate_data

from sklearn_relish import RelishRegressor
from tiny import build_tiny_llama

TINY = build_tiny_llama(tempfile.mkdtemp(prefix="relish-checks-"))


class NumbersRegressor(RelishRegressor):
    """RelishRegressor on numeric rows, validated as scikit-learn does."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, y_numeric=True, multi_output=True)
        return super().fit(_short(X), y)

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return super().predict(_short(X))

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return super().transform(_short(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = False
        tags.input_tags.two_d_array = True
        return tags


def _short(X):
    return np.round(np.asarray(X, dtype=np.float64), 3).astype(object)


def _estimator():
    return NumbersRegressor(backbone=TINY, latent_dim=16, n_heads=2, max_epochs=2,
                            batch_size=8, max_length=512, random_state=0)


EXPECTED_FAILURES = {
    "check_regressors_train": (
        "asks for R^2 > 0.5 on numeric data after 2 epochs; a random tiny Llama "
        "reading numbers written as text cannot do that (the real backbone's "
        "learning is tested in test_estimator and test_real_backbone)"),
}


@parametrize_with_checks([_estimator()], expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
