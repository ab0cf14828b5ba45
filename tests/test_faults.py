"""Faults and hostile files, injected the way they happen.

Saving never deletes what it does not own and swaps a model in atomically
(SIGKILL mid-save); loading runs no code and refuses damaged or edited
files; the cache's reservations never hang a fit (empty, foreign, stale and
interrupted claims), a full disk degrades to memory, and what the cache
creates is never writable by others.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish import cache as cache_module
from sklearn_relish import persistence
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import CacheWarning, DiskCache, cached_states, text_key

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=32, n_heads=4, batch_size=16, random_state=0, max_epochs=2,
            cache_dir=None)


@pytest.fixture(scope="module")
def task():
    return sentiment_task(60, seed=21)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, task):
    X, y = task
    return RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)


def _rewrite(path, edit):
    """Edit a saved config.json and write a matching digest, as someone who
    knows the format would (the digest is no signature)."""
    config = json.loads((path / "config.json").read_text())
    edit(config)
    config["digest"]["config"] = persistence._config_digest(config)
    (path / "config.json").write_text(json.dumps(config))


# -- save never deletes what it does not own ----------------------------------


def test_save_refuses_a_directory_with_other_content(fitted, tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.csv").write_text("a,b\n")
    (project / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="project.*holds more than a saved model"):
        fitted.save(project)
    assert (project / "notes.txt").read_text() == "mine"
    assert (project / "data" / "train.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_save_refuses_a_file_and_the_working_directory(fitted, tmp_path, monkeypatch):
    report = tmp_path / "report.txt"
    report.write_text("keep")
    with pytest.raises(FileExistsError, match="report.txt.*is a file"):
        fitted.save(report)
    assert report.read_text() == "keep"
    monkeypatch.chdir(tmp_path)
    for target in (os.getcwd(), ".", tmp_path / "x" / ".."):
        with pytest.raises(ValueError, match="working directory"):
            fitted.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_save_replaces_a_model_or_an_empty_directory(fitted, tiny_model_dir, task, tmp_path):
    X, y = task
    empty = tmp_path / "empty"
    empty.mkdir()
    fitted.save(empty)
    other = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "random_state": 1}).fit(X, y)
    other.save(empty)
    np.testing.assert_array_equal(RelishRegressor.load(empty).predict(X[:5]),
                                  other.predict(X[:5]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


_SAVER = textwrap.dedent("""
    import os, pickle, signal, sys
    from sklearn_relish import persistence
    models = [pickle.load(open(p, "rb")) for p in sys.argv[2:4]]
    if sys.argv[4] == "fallback":
        # No atomic exchange: the two renames, killed between them.
        persistence._exchange = lambda a, b: False
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith("model") and "-old-" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
    i = 0
    while True:
        models[i % 2].save(sys.argv[1])
        i += 1
        print(i, flush=True)
""")


def _saver(tmp_path, a, b, mode):
    paths = []
    for name, model in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.pkl")
        paths[-1].write_bytes(__import__("pickle").dumps(model))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path / "model"),
                             *map(str, paths), mode], stdout=subprocess.PIPE, env=env)


def test_sigkill_mid_save_leaves_the_old_or_the_new_model(fitted, tiny_model_dir, task,
                                                         tmp_path):
    X, y = task
    other = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "random_state": 2}).fit(X, y)
    expected = [fitted.predict(X[:5]), other.predict(X[:5])]
    fitted.save(tmp_path / "model")
    process = _saver(tmp_path, fitted, other, "atomic")
    try:
        process.stdout.readline()               # a few saves have happened
        process.stdout.readline()
        # Loads while the saves go on: each must see one whole model. Reading
        # the files one by one through the path mixed two models in about 1
        # load of 30 (a config from one save, weights from the next).
        for _ in range(150):
            got = RelishRegressor.load(tmp_path / "model").predict(X[:5])
            assert any(np.array_equal(got, e) for e in expected)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    got = RelishRegressor.load(tmp_path / "model").predict(X[:5])
    assert any(np.array_equal(got, e) for e in expected)


def test_a_crash_between_the_fallback_renames_is_recovered_by_load(fitted, tiny_model_dir,
                                                                   task, tmp_path):
    X, y = task
    other = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "random_state": 3}).fit(X, y)
    fitted.save(tmp_path / "model")
    process = _saver(tmp_path, other, other, "fallback")
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "model").exists()        # the window: between the renames
    with pytest.warns(UserWarning, match="save to it was interrupted"):
        recovered = RelishRegressor.load(tmp_path / "model")
    np.testing.assert_array_equal(recovered.predict(X[:5]), other.predict(X[:5]))


# -- load never runs code and refuses damaged files -----------------------------


def test_load_never_takes_trust_remote_code_from_the_files(fitted, tmp_path):
    path = fitted.save(tmp_path / "model")
    _rewrite(path, lambda c: c["params"].update(trust_remote_code=True))
    with pytest.raises(ValueError, match="trust_remote_code=True.*load it with"):
        RelishRegressor.load(path)
    with pytest.warns(UserWarning, match="may run code"):
        loaded = RelishRegressor.load(path, trust_remote_code=True)
    assert loaded.trust_remote_code and loaded.backbone_config_.trust_remote_code


def test_a_planted_auto_map_never_runs(fitted, tiny_model_dir, task, tmp_path):
    """A backbone directory whose config names its own Python code: loading
    and predicting with a saved model pointing at it runs nothing."""
    import shutil

    evil = Path(shutil.copytree(tiny_model_dir, tmp_path / "evil"))
    marker = tmp_path / "ran"
    (evil / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil_model.EvilModel",
                          "AutoConfig": "evil_model.EvilConfig"}
    (evil / "config.json").write_text(json.dumps(config))
    path = fitted.save(tmp_path / "model")
    _rewrite(path, lambda c: c["params"].update(backbone=str(evil)))
    loaded = RelishRegressor.load(path)
    try:
        loaded.predict(task[0][:2])
    except Exception:
        pass        # refused by transformers, or loaded without the code
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    ("flip_weights", "head.safetensors.*does not match the digest"),
    ("other_weights", "head.safetensors.*does not match the digest"),
    ("edit_template", "config.json.*does not match its digest"),
    ("edit_y_mean", "head.safetensors.*does not match the digest"),
])
def test_damaged_or_edited_files_are_refused_by_name(fitted, tiny_model_dir, task, tmp_path,
                                                     damage, message):
    from safetensors.torch import load_file, save_file

    path = fitted.save(tmp_path / "model")
    weights = path / "head.safetensors"
    if damage == "flip_weights":
        blob = bytearray(weights.read_bytes())
        blob[-3] ^= 0x40                               # an exponent bit
        weights.write_bytes(bytes(blob))
    elif damage == "other_weights":
        X, y = task
        other = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "random_state": 4})
        other.fit(X, y).save(tmp_path / "other")
        weights.write_bytes((tmp_path / "other" / "head.safetensors").read_bytes())
    elif damage == "edit_template":
        config = json.loads((path / "config.json").read_text())
        config["fitted"]["prompt_template_"] = "Score:\n{0}"
        (path / "config.json").write_text(json.dumps(config))
    else:
        tensors = load_file(str(weights))
        tensors["y_mean"] = tensors["y_mean"] + 0.56
        save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=message):
        RelishRegressor.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["params"].update(max_epochs=-1), r"invalid parameters.*max_epochs"),
    (lambda c: c["params"].update(latent_dim="32"), r"invalid parameters.*latent_dim"),
    (lambda c: c["params"].update(no_such_parameter=1), r"invalid parameters"),
    (lambda c: c.pop("versions"), r"malformed.*versions"),
    (lambda c: c["fitted"].pop("d_model_"), r"malformed.*d_model_"),
    (lambda c: c["fitted"].update(prompt_template_=7), r"prompt_template_ is not a string"),
])
def test_malformed_configs_name_the_file_and_the_problem(fitted, tmp_path, edit, message):
    path = fitted.save(tmp_path / "model")
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=message) as info:
        RelishRegressor.load(path)
    assert "config.json" in str(info.value)


def test_unreadable_configs_name_the_file(fitted, tmp_path):
    path = fitted.save(tmp_path / "model")
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json.*not a sklearn-relish model"):
        RelishRegressor.load(path)
    (path / "config.json").write_text('{"format": "sklearn-relish", ')
    with pytest.raises(ValueError, match="config.json.*not valid JSON"):
        RelishRegressor.load(path)


# -- cache entries --------------------------------------------------------------


def test_swapped_or_edited_cache_entries_read_as_corrupt(tmp_path):
    disk = DiskCache(tmp_path, "f" * 64)
    a, b = torch.randn(3, 4).half(), torch.randn(3, 4).half()
    disk.put("aa01", a)
    disk.put("aa02", b)
    first, second = disk.path("aa01"), disk.path("aa02")
    blob_a, blob_b = first.read_bytes(), second.read_bytes()
    first.write_bytes(blob_b)
    second.write_bytes(blob_a)
    assert disk.get("aa01") is None and disk.get("aa02") is None
    changed = bytearray(blob_a)
    changed[8] = 2                                     # float16 -> bfloat16
    first.write_bytes(bytes(changed))
    assert disk.get("aa01") is None
    changed = bytearray(blob_a)
    changed[12:16], changed[16:20] = changed[16:20], changed[12:16]   # rows <-> columns
    first.write_bytes(bytes(changed))
    assert disk.get("aa01") is None
    assert disk.n_corrupt == 4


# -- reservations never hang ----------------------------------------------------


def _claim(disk, key, text, age=0.0):
    path = disk.path(key).with_suffix(".claim")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def test_stale_reservations_are_taken_over(tmp_path):
    disk = DiskCache(tmp_path, "f" * 64)
    host, pid, started, boot = cache_module._owner()
    live = f"{host} {pid} {started} {boot}"
    child = subprocess.Popen([sys.executable, "-c", "pass"])     # killed mid-encode, say
    child.wait()
    cases = {
        "aa00": (f"{host} {child.pid} 1 {boot}", 0.0, True),    # its process is gone
        "aa01": ("", 0.0, False),                            # being written
        "aa02": ("", 60.0, True),                            # writer killed
        "aa03": ("\x00\xff garbage", 60.0, True),
        "aa04": (live, 0.0, False),                          # this very process
        "aa05": (f"{host} {pid} 1 {boot}", 0.0, True),       # its pid, reused
        "aa06": (f"{host} {pid} {started} other-boot", 0.0, True),   # host restarted
        "aa07": (f"elsewhere 1 1 {boot}", 0.0, False),       # another host, recent
        "aa08": (f"elsewhere 1 1 {boot}", 700.0, True),      # ... and old
        "aa09": (live, 700.0, True),                         # stopped renewing
    }
    for key, (text, age, stale) in cases.items():
        assert disk._stale(_claim(disk, key, text, age)) is stale, key


def _backbone(tiny_model_dir):
    return load_backbone(RelishRegressor(backbone=tiny_model_dir).get_backbone_config())


def test_a_foreign_claim_is_waited_for_with_a_message_then_taken_over(
        tiny_model_dir, tmp_path, monkeypatch, empty_memory):
    backbone = _backbone(tiny_model_dir)
    texts = ["a good film", "awful"]
    disk = DiskCache(tmp_path, backbone.fingerprint)
    disk.stale_seconds = 1.0
    monkeypatch.setattr(cache_module, "WAIT_NOTICE_SECONDS", 0.2)
    for text in texts:
        _claim(disk, text_key(backbone.fingerprint, text), "elsewhere 4242 1 boot")
    start = time.monotonic()
    with pytest.warns(CacheWarning, match="process 4242 on host 'elsewhere'.*claim"):
        states, _ = cached_states(backbone, texts, disk=disk)
    assert time.monotonic() - start < 10
    assert len(states) == 2 and not list(tmp_path.rglob("*.claim"))


@pytest.mark.parametrize("where", ["encoding", "reserving"])
def test_an_interrupt_releases_every_reservation(tiny_model_dir, tmp_path, monkeypatch,
                                                 empty_memory, where):
    backbone = _backbone(tiny_model_dir)
    texts, _ = sentiment_task(80, seed=22)
    disk = DiskCache(tmp_path, backbone.fingerprint)
    if where == "encoding":
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(backbone, "iter_states", interrupted)
    else:
        reserve, calls = disk.reserve, []

        def interrupted(key):
            calls.append(key)
            if len(calls) == 5:
                raise KeyboardInterrupt
            return reserve(key)
        monkeypatch.setattr(disk, "reserve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_states(backbone, texts, disk=disk, batch_size=4)
    assert not list(tmp_path.rglob("*.claim"))
    # ... so the next fit in the same notebook does not wait for them.
    monkeypatch.undo()
    states, _ = cached_states(backbone, texts, disk=DiskCache(tmp_path, backbone.fingerprint))
    assert len(states) == len(texts)


# -- a full disk ------------------------------------------------------------------


def test_a_full_disk_degrades_to_memory_every_time(tiny_model_dir, task, tmp_path,
                                                   monkeypatch, empty_memory):
    """Claims cannot be written (ENOSPC injected): each fit warns once,
    fits in memory and leaves no claim behind."""
    real_open = os.open

    def full(path, flags, *args, **kwargs):
        if str(path).endswith(".claim"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(cache_module.os, "open", full)
    X, y = task
    for _ in range(2):
        empty_memory.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reg = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "cache_dir": tmp_path})
            reg.fit(X, y)
        cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
        assert len(cache_warnings) == 1 and "No space left" in str(cache_warnings[0].message)
        assert not list(tmp_path.rglob("*.claim"))


def _tmpfs(path, size="2m"):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_real_full_tmpfs_degrades_to_memory_and_never_hangs(tiny_model_dir, task, tmp_path,
                                                              empty_memory):
    mount = tmp_path / "small"
    _tmpfs(mount)
    try:
        (mount / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 8192))
        X, y = task
        for _ in range(2):
            empty_memory.clear()
            with pytest.warns(CacheWarning):
                reg = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "cache_dir": mount})
                reg.fit(X, y)
            assert not [p for p in mount.rglob("*") if p.suffix == ".claim"]
        (mount / "filler").unlink()            # space is freed: the next fit caches
        empty_memory.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            RelishRegressor(backbone=tiny_model_dir, **{**FAST, "cache_dir": mount}).fit(X, y)
        assert list(mount.rglob("*.states"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- permissions ----------------------------------------------------------------


def test_cache_files_are_never_group_writable_and_links_are_not_followed(
        tiny_model_dir, tmp_path, empty_memory):
    backbone = _backbone(tiny_model_dir)
    target = tmp_path / "elsewhere.txt"
    target.write_text("untouched")
    root = tmp_path / "cache"
    old = os.umask(0o002)
    try:
        disk = DiskCache(root, backbone.fingerprint)
        disk.check_writable()
        (disk.directory / "encoded.log").symlink_to(target)
        cached_states(backbone, ["a good film", "awful"], disk=disk)
    finally:
        os.umask(old)
    assert target.read_text() == "untouched"
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        assert not path.stat().st_mode & 0o022, path


# -- reproducibility: the exact guarantee -----------------------------------------


def test_a_seeded_fit_repeats_exactly_on_the_same_states_from_memory_or_disk(
        tiny_model_dir, task, tmp_path, empty_memory):
    """The documented guarantee: the same token states (from memory or from
    disk, in any process) and an int random_state give identical
    predictions on one CPU with one thread count."""
    X, y = task
    params = {**FAST, "cache_dir": tmp_path}
    first = RelishRegressor(backbone=tiny_model_dir, **params).fit(X, y).predict(X)
    empty_memory.clear()                               # now read from the disk
    second = RelishRegressor(backbone=tiny_model_dir, **params).fit(X, y).predict(X)
    np.testing.assert_array_equal(first, second)


def test_states_encoded_in_other_batches_differ_by_rounding_only(tiny_model_dir,
                                                                 empty_memory):
    """What the guarantee leaves out: a text encoded afresh in another batch
    (other companions, another padding) may differ in its last bits, and no
    more."""
    backbone = _backbone(tiny_model_dir)
    texts, _ = sentiment_task(40, seed=23)
    together, _ = backbone.encode(texts, batch_size=40)
    alone, _ = backbone.encode(texts, batch_size=1)
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -9, atol=2 ** -12)
