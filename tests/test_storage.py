"""Token states stored in int8 with a scale per token (state_storage="int8")."""

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import HEADER_BYTES, MEMORY_CACHE, DiskCache, cached_states, text_key
from sklearn_relish.storage import bytes_per_token, pack, storage_fingerprint, unpack

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=32, n_heads=4, batch_size=16, random_state=0)


def _states(n_tokens=50, d_model=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(n_tokens, d_model, generator=generator)
    # LLM states: a few features with large offsets, rows of varied size.
    states[:, 3] += 40.0
    states *= torch.logspace(-2, 2, n_tokens)[:, None]
    return states.half()


def test_int8_round_trip_is_within_half_a_step_per_token():
    states = _states()
    entry = pack(states, "int8")
    assert entry.dtype == torch.int8 and entry.shape == (50, 64 + 2)
    back = unpack(entry, "int8")
    assert back.dtype == torch.float16 and back.shape == states.shape
    exact = states.float()
    step = exact.abs().amax(dim=1, keepdim=True) / 127
    error = (back.float() - exact).abs()
    # Half a step of rounding; the float16 of the dequantised value adds
    # at most 2**-11 of it.
    assert (error <= 0.5 * step * (1 + 2**-7) + exact.abs() * 2**-11).all()
    # ... and the error is that of 8 bits, not less: the test sees int8.
    assert (error.amax(dim=1) > 0.1 * step.squeeze(1)).all()
    # A token with one large feature pays for it on the others: about 2 %
    # of its norm here, as in the offsets LLM states carry.
    relative = (error.norm(dim=1) / exact.norm(dim=1)).max()
    assert relative < 0.03


def test_int8_keeps_zero_rows_and_values_beyond_float16():
    states = torch.zeros(3, 8)
    states[1, 2] = 1e6          # float16 would overflow: bfloat16 comes back
    states[1, 5] = -3.0
    states[2] = torch.arange(8.0)
    back = unpack(pack(states, "int8"), "int8")
    assert back.dtype == torch.bfloat16
    assert not back[0].any()
    assert back[1, 2].item() == pytest.approx(1e6, rel=1e-2)
    assert torch.isfinite(back.float()).all()
    # Half a step, plus bfloat16's rounding (the whole text comes back in
    # bfloat16, as float16 storage gives it).
    torch.testing.assert_close(back[2].float(), states[2], rtol=0,
                               atol=0.5 * 7 / 127 * (1 + 2**-7) + 7 * 2**-8)


def test_float16_storage_is_the_states_themselves():
    states = _states()
    assert pack(states, "float16") is states and unpack(states, "float16") is states
    assert storage_fingerprint("f", "float16") == "f"
    assert len({storage_fingerprint("f", "int8"), storage_fingerprint("g", "int8"), "f"}) == 3
    assert bytes_per_token(576, "int8") == 578 and bytes_per_token(576, "float16") == 1152
    with pytest.raises(ValueError, match="int4"):
        pack(states, "int4")


def test_disk_format_is_versioned_and_earlier_entries_are_encoded_again(tmp_path):
    disk = DiskCache(tmp_path, "f" * 64)
    states = _states(5, 16)
    entry = pack(states, "int8")
    disk.put("aa01", entry)
    disk.put("aa02", states)
    blob = disk.path("aa01").read_bytes()
    assert blob[:8] == b"RLSHTS3\0" == disk.path("aa02").read_bytes()[:8]
    assert len(blob) == HEADER_BYTES + 5 * bytes_per_token(16, "int8")
    assert torch.equal(disk.get("aa01"), entry) and torch.equal(disk.get("aa02"), states)
    # An entry of an earlier format (its digest covered the payload only)
    # reads as missing, so it is encoded again.
    payload = states.contiguous().view(torch.uint8).numpy().tobytes()
    old = struct.pack("<8sBxxxIIQ16s", b"RLSHTS1\0", 1, 5, 16, len(payload),
                      hashlib.blake2b(payload, digest_size=16).digest()) + payload
    disk.path("aa03").write_bytes(old)
    assert disk.get("aa03") is None


def test_int8_states_are_cached_under_their_own_keys(tiny_model_dir, empty_memory, tmp_path):
    backbone = load_backbone(RelishRegressor(backbone=tiny_model_dir).get_backbone_config())
    texts = ["a good film", "the plot", "a good film", "awful"]
    fingerprint = storage_fingerprint(backbone.fingerprint, "int8")
    disk = DiskCache(tmp_path, fingerprint)
    before = backbone.n_texts_encoded
    half, _ = cached_states(backbone, texts, storage="float16")
    quarter, _ = cached_states(backbone, texts, disk=disk, storage="int8")
    # The int8 entries are not the float16 ones: the texts ran again.
    assert backbone.n_texts_encoded - before == 2 * len(set(texts))
    for h, q in zip(half, quarter):
        assert q.dtype == torch.float16
        torch.testing.assert_close(q, unpack(pack(h, "int8"), "int8"), rtol=0, atol=1e-3)
    assert quarter[0] is quarter[2]
    entry = MEMORY_CACHE.get(text_key(fingerprint, texts[0]))
    assert entry.dtype == torch.int8 and entry.shape == (len(half[0]), backbone.d_model + 2)
    # Read back from disk alone, they are what the first call returned.
    MEMORY_CACHE.clear()
    again, _ = cached_states(backbone, texts, disk=disk, storage="int8")
    assert backbone.n_texts_encoded - before == 2 * len(set(texts))
    assert all(torch.equal(a, q) for a, q in zip(again, quarter))


def test_regressor_trains_on_int8_states(tiny_model_dir, empty_memory, tmp_path):
    X, y = sentiment_task(240, seed=0)
    half = RelishRegressor(backbone=tiny_model_dir, max_epochs=25, cache_dir=None, **FAST)
    quarter = RelishRegressor(backbone=tiny_model_dir, max_epochs=25, cache_dir=tmp_path,
                              state_storage="int8", **FAST)
    half.fit(X[:180], y[:180])
    quarter.fit(X[:180], y[:180])
    pred_half, pred_quarter = half.predict(X[180:]), quarter.predict(X[180:])
    assert r2_score(y[180:], pred_quarter) > 0.8
    assert quarter.loss_curve_[-1] < 0.5 * quarter.loss_curve_[0]
    # Same seed, states apart by int8 rounding: nearly the same model (0.997
    # correlation, R2 0.963 against 0.970 when written). The arithmetic of
    # the scales is tested above: the tiny model's final norm gives every
    # token about the same scale, so dropping them would go unseen here.
    assert np.corrcoef(pred_half, pred_quarter)[0, 1] > 0.99
    assert abs(r2_score(y[180:], pred_quarter) - r2_score(y[180:], pred_half)) < 0.03
    # On disk in a directory of their own, d_model + 2 bytes per token.
    (meta,) = tmp_path.glob("*/backbone.json")
    assert json.loads(meta.read_text())["storage"] == "int8"
    sizes = [f.stat().st_size for f in tmp_path.rglob("*.states")]
    tokens = sum(len(s) for s in quarter.token_states(list(dict.fromkeys(X))))
    assert sum(sizes) == 44 * len(sizes) + tokens * (quarter.d_model_ + 2)
    # From the disk alone, the same predictions.
    MEMORY_CACHE.clear()
    np.testing.assert_array_equal(quarter.predict(X[180:]), pred_quarter)


