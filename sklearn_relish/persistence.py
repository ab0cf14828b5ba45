"""Save and load a fitted regressor without pickle.

A saved model is a directory of two files:

- ``config.json``: the estimator's parameters, the fitted state that is not
  a tensor, the backbone's identity, the library versions and a SHA-256
  digest of everything that changes predictions;
- ``head.safetensors``: the head's weights, the target scaling and the
  uncertainty calibration's arrays;

and, for a regressor fitted with ``backbone_tuning="lora"``, a third:

- ``adapters.safetensors``: the LoRA adapters' weights (their settings and
  fingerprint are in ``config.json``).

What loading a model from someone else can and cannot do:

- It runs no code from the files: JSON and safetensors are data (unlike a
  pickle). The backbone is loaded again by its name, with
  ``trust_remote_code`` off unless the caller passes
  ``load(path, trust_remote_code=True)`` itself: a saved ``true`` is never
  enough, so a model cannot bring a backbone whose repository runs code.
- It checks the digest: a file that was damaged or edited after saving
  (a flipped bit in the weights, a hand-edited parameter) is refused with
  an error naming the file. The digest guards against accidents, not
  against someone who rewrites the files and the digest together: it is
  not a signature.
- Parameters are validated as ``fit`` validates them, and every malformed
  file is an error that names it and what is wrong.
- It still predicts with whatever head and backbone name the files hold:
  a model from an untrusted source can predict badly, and it names the
  backbone that will be loaded (a local path or a hub name). Read
  ``config.json`` first, or load with the backbone name you expect and
  compare ``reg.backbone``.

Saving never deletes what it does not own: ``path`` must be new, an empty
directory, or a directory that holds a saved model and nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

__all__ = ["load", "save"]

FORMAT_VERSION = 3
_CONFIG = "config.json"
_WEIGHTS = "head.safetensors"
_ADAPTERS = "adapters.safetensors"
#: What a saved model directory may hold (``cli.json``: the columns the
#: command line's ``fit`` read, written beside the model).
_MODEL_FILES = {_CONFIG, _WEIGHTS, _ADAPTERS, "cli.json"}
#: Prefix of the temporary directories ``save`` writes next to ``path``.
_TMP_PREFIX = ".relish-save-"


def _versions():
    import sklearn
    import skorch
    import transformers

    from . import __version__

    return {"sklearn_relish": __version__, "scikit-learn": sklearn.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "skorch": skorch.__version__}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _config_digest(config):
    """SHA-256 of ``config`` without its digest, canonically serialised."""
    body = {k: v for k, v in config.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def is_saved_model(path):
    """Whether the directory ``path`` holds a saved model and nothing else
    (or nothing at all): what :func:`save` may replace."""
    path = Path(path)
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return True
    if not entries <= _MODEL_FILES or _CONFIG not in entries:
        return False
    try:
        return json.loads((path / _CONFIG).read_text()).get("format") == "sklearn-relish"
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(path):
    """Refuse, naming ``path``, anything save must not replace."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(
            f"Cannot save to {str(path)!r}: it is the working directory (or holds it), "
            "which save would have to replace. Save to a new subdirectory, e.g. "
            "reg.save('model').")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(
            f"Cannot save to {str(path)!r}: it is a file (or a link), not a model "
            "directory. save writes a directory; choose a new path, or remove the file "
            "yourself.")
    if path.is_dir() and not is_saved_model(path):
        other = sorted({p.name for p in path.iterdir()} - _MODEL_FILES)[:5]
        raise FileExistsError(
            f"Cannot save to {str(path)!r}: it is a directory that holds more than a "
            f"saved model (for example {other}), and save replaces the whole "
            "directory. Choose a new path or an empty directory; nothing was changed.")


def _fsync(path, directory=False):
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Swap two directories in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or file system lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def save(estimator, path):
    """Write a fitted :class:`RelishRegressor` to the directory ``path``.

    ``path`` must be new, an empty directory, or a directory holding a
    saved model and nothing else (which is replaced); anything else (a
    file, a directory with other content, the working directory) is an
    error that names it, and nothing is deleted. The model is written
    under a temporary name next to ``path`` and swapped in at the end in
    one atomic step (``renameat2(RENAME_EXCHANGE)`` on Linux), so at every
    instant ``path`` holds the old model or the new one, never a mix or
    nothing; a failed write (disk full, no permission) leaves the old one
    untouched. Where the atomic swap is not available, the old model is
    moved aside and the new one moved in: a crash between the two renames
    leaves ``path`` missing and the new model complete in a hidden
    ``.relish-save-*`` directory beside it, which :func:`load` of ``path``
    finds and loads, with a warning saying how to finish the move.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    from safetensors.torch import save_file

    path = Path(path)
    _check_target(path)
    params = estimator.get_params(deep=False)
    params = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v)
              for k, v in params.items()}
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None  # a RandomState object is not JSON
    if params.get("callbacks"):
        # Objects with code, and of use in training only: not saved.
        warnings.warn("callbacks are not saved: the loaded model has callbacks=None.",
                      UserWarning, stacklevel=3)
        params["callbacks"] = None
    if params.get("optimizer_kwargs"):
        params["optimizer_kwargs"] = json.loads(json.dumps(params["optimizer_kwargs"]))
    fitted = {
        "loss_curve_": estimator.loss_curve_,
        "validation_loss_curve_": estimator.validation_loss_curve_,
        "shrinkage_": [float(v) for v in estimator.shrinkage_],
        "anchor_alpha_": (None if estimator.anchor_alpha_ is None
                          else [float(v) for v in estimator.anchor_alpha_]),
        "anchor_pooling_": estimator.anchor_pooling_,
        "anchor_scale_": (None if estimator.anchor_scale_ is None
                          else [float(v) for v in estimator.anchor_scale_]),
        "best_validation_loss_": estimator.best_validation_loss_,
        "n_iter_": estimator.n_iter_,
        "n_folds_": estimator.n_folds_,
        "n_trainable_params_": estimator.n_trainable_params_,
        "d_model_": estimator.d_model_,
        "n_outputs_": estimator.n_outputs_,
        "n_features_in_": estimator.n_features_in_,
        "prompt_template_": estimator.prompt_template_,
        "backbone_fingerprint_": estimator.backbone_fingerprint_,
        "backbone_config_": asdict(estimator.backbone_config_),
        "feature_names_in_": (list(estimator.feature_names_in_)
                              if hasattr(estimator, "feature_names_in_") else None),
        "y_1d": estimator.target_ndim_ == 1,
        "calibration_": (None if getattr(estimator, "calibration_", None) is None
                         else estimator.calibration_.to_json()),
    }
    adapters = getattr(estimator, "lora_adapters_", None)
    if adapters is not None:
        fitted["lora_adapters_"] = adapters.describe()
    config = {"format": "sklearn-relish", "format_version": FORMAT_VERSION,
              "class": type(estimator).__name__, "params": params,
              "fitted": fitted, "versions": _versions()}
    tensors = {f"head.{k}": v.detach().cpu().contiguous()
               for k, v in estimator.net_.module_.state_dict().items()}
    tensors["y_mean"] = torch.as_tensor(estimator.target_mean_, dtype=torch.float64)
    tensors["y_scale"] = torch.as_tensor(estimator.target_scale_, dtype=torch.float64)
    if fitted["calibration_"] is not None:
        for name, value in estimator.calibration_.to_arrays().items():
            tensors[f"calibration.{name}"] = torch.as_tensor(value, dtype=torch.float64)

    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{path.name}-", dir=parent))
    try:
        save_file(tensors, str(tmp / _WEIGHTS))
        files = {_WEIGHTS: _sha256(tmp / _WEIGHTS)}
        if adapters is not None:
            save_file(adapters.tensors, str(tmp / _ADAPTERS))
            files[_ADAPTERS] = _sha256(tmp / _ADAPTERS)
        config["digest"] = {"files": files}
        config["digest"]["config"] = _config_digest(config)
        (tmp / _CONFIG).write_text(json.dumps(config, indent=1))
        for name in os.listdir(tmp):
            _fsync(tmp / name)
        os.chmod(tmp, 0o755 & ~_umask())
        _fsync(tmp, directory=True)
        if path.exists():
            if not _exchange(tmp, path):
                old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{path.name}-old-",
                                            dir=parent))
                os.replace(path, old / "model")
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old / "model", path)
                    shutil.rmtree(old, ignore_errors=True)
                    raise
                tmp = old
        else:
            os.rename(tmp, path)
        _fsync(parent, directory=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Malformed(ValueError):
    pass


def _interrupted_save(path):
    """A complete model that an interrupted :func:`save` of ``path`` left in
    a temporary directory beside it, or None."""
    parent = path.parent if str(path.parent) else Path(".")
    # The new model first (complete before the old one is moved), then the old.
    candidates = sorted(parent.glob(f"{_TMP_PREFIX}{path.name}-*"),
                        key=lambda p: ("-old-" in p.name, -p.stat().st_mtime))
    for candidate in candidates:
        for directory in (candidate, candidate / "model"):
            if (directory / _CONFIG).is_file() and (directory / _WEIGHTS).is_file():
                return directory
    return None


def load(cls, path, device=None, trust_remote_code=False):
    """Load a regressor written by :func:`save` (``RelishRegressor.load``
    calls this with itself as ``cls``).

    Parameters
    ----------
    cls : type
        The estimator class to rebuild, ``RelishRegressor`` or a subclass.
    path : str or Path
    device : str, optional
        Overrides the saved ``device`` parameter (for example "cpu" for a
        model saved on a GPU machine). A CUDA device is mapped to the CPU
        when no GPU is present.
    trust_remote_code : bool, default=False
        Let the backbone's repository run its own code, for a model that
        was saved with ``trust_remote_code=True``; never taken from the
        files. Loading such a model without it is an error; with it, a
        warning.
    """
    path = Path(path)
    config_path = path / _CONFIG
    if not path.exists():
        recovered = _interrupted_save(path)
        if recovered is None:
            raise FileNotFoundError(
                f"{str(path)!r} does not exist. Save a model with RelishRegressor.save(path).")
        warnings.warn(
            f"{str(path)!r} is missing, but a save to it was interrupted and left a complete "
            f"model in {str(recovered)!r}; loading that one. Move it to {str(path)!r} to "
            "finish the save.", UserWarning, stacklevel=3)
        path, config_path = recovered, recovered / _CONFIG
    files = _read_snapshot(path)
    if files[_CONFIG] is None:
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved sklearn-relish model: it has no "
            f"{_CONFIG}. Save one with RelishRegressor.save(path).")
    try:
        config = json.loads(files[_CONFIG])
    except ValueError as exc:
        raise ValueError(f"{str(config_path)!r} is not valid JSON ({exc}): the file was "
                         "damaged or edited. Save the model again.") from None
    if not isinstance(config, dict) or config.get("format") != "sklearn-relish":
        raise ValueError(f"{str(config_path)!r} is not a sklearn-relish model.")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ValueError(
            f"{str(path)!r} was saved in format version {version}, "
            + ("newer than this sklearn-relish understands; upgrade sklearn-relish."
               if newer else f"which this sklearn-relish ({FORMAT_VERSION}) no longer reads; "
               "fit and save it again."))
    try:
        return _load_checked(cls, path, config, files, device, trust_remote_code)
    except _Malformed as exc:
        raise ValueError(str(exc)) from None
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(
            f"{str(config_path)!r} is malformed ({type(exc).__name__}: {exc}): a field is "
            "missing or has the wrong type. Save the model again.") from None


#: How often :func:`_read_snapshot` starts again when a concurrent save
#: replaced the directory while it was being read.
_SNAPSHOT_ATTEMPTS = 20


def _read_snapshot(path):
    """The bytes of every file a saved model may hold (None where absent),
    all from one and the same directory.

    ``save`` replaces a model by swapping whole directories, so reading the
    files one by one through ``path`` could take ``config.json`` from one
    model and the weights from the next. Here every file is opened relative
    to one handle on the directory: a swap during the read cannot mix two
    models. If ``path`` names another directory once the read is done (a
    save swapped it in, and may have begun deleting the old one before all
    its files were opened), the read starts again at ``path``.
    """
    names = (_CONFIG, _WEIGHTS, _ADAPTERS)
    if os.open not in os.supports_dir_fd:           # Windows: no directory handles
        return {name: (path / name).read_bytes() if (path / name).is_file() else None
                for name in names}
    for _ in range(_SNAPSHOT_ATTEMPTS):
        directory = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            files = {}
            for name in names:
                try:
                    handle = os.open(name, os.O_RDONLY, dir_fd=directory)
                except FileNotFoundError:
                    files[name] = None
                    continue
                with os.fdopen(handle, "rb") as stream:
                    files[name] = stream.read()
            replaced = os.fstat(directory).st_ino != _inode(path)
        finally:
            os.close(directory)
        if not replaced:
            return files
    return files                                    # saved over without pause: the last read


def _inode(path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _verify(path, config, files):
    config_path = path / _CONFIG
    digest = config.get("digest")
    if not isinstance(digest, dict) or not isinstance(digest.get("files"), dict):
        raise _Malformed(f"{str(config_path)!r} has no digest: it was not written by "
                         "save, or was edited. Save the model again.")
    if _config_digest(config) != digest.get("config"):
        raise _Malformed(f"{str(config_path)!r} does not match its digest: it was edited or "
                         "damaged after saving (its parameters change predictions). Save "
                         "the model again, or restore the file.")
    expected = {_WEIGHTS} | ({_ADAPTERS} if "lora_adapters_" in config["fitted"] else set())
    if set(digest["files"]) != expected:
        raise _Malformed(f"{str(config_path)!r} lists the files {sorted(digest['files'])}, "
                         f"not {sorted(expected)}.")
    for name, value in digest["files"].items():
        if files[name] is None:
            raise _Malformed(f"{str(path / name)!r} is missing.")
        if hashlib.sha256(files[name]).hexdigest() != value:
            raise _Malformed(f"{str(path / name)!r} does not match the digest in {_CONFIG}: "
                             "it was changed or damaged after saving. Save the model again, "
                             "or restore the file.")


def _load_checked(cls, path, config, files, device, trust_remote_code):
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors
    from sklearn.utils._param_validation import InvalidParameterError

    from .backbone import BackboneConfig
    from .fitting import head_net

    _verify(path, config, files)
    saved = config["versions"].get("sklearn_relish")
    current = _versions()["sklearn_relish"]
    if saved != current:
        warnings.warn(f"This model was saved with sklearn-relish {saved}; "
                      f"loading it with {current}.", UserWarning, stacklevel=4)

    params = dict(config["params"])
    if params.get("trust_remote_code"):
        if not trust_remote_code:
            raise ValueError(
                f"{str(path)!r} was saved with trust_remote_code=True: its backbone "
                f"({params.get('backbone')!r}) runs code from its own repository, which "
                "loading never allows on the files' word. If you trust that code, load it "
                "with RelishRegressor.load(path, trust_remote_code=True).")
        warnings.warn(f"Loading {str(path)!r} with trust_remote_code=True: the backbone "
                      f"{params.get('backbone')!r} may run code from its repository.",
                      UserWarning, stacklevel=4)
    params["trust_remote_code"] = bool(params.get("trust_remote_code") and trust_remote_code)
    if device is not None:
        params["device"] = device
    if str(params["device"]).startswith("cuda") and not torch.cuda.is_available():
        params["device"] = "cpu"
    try:
        estimator = cls(**params)
        estimator._validate_params()
    except (TypeError, InvalidParameterError) as exc:
        raise _Malformed(f"{str(path / _CONFIG)!r} holds invalid parameters: {exc}") from None
    fitted = config["fitted"]
    try:
        tensors = load_tensors(files[_WEIGHTS])
    except SafetensorError as exc:
        raise _Malformed(f"{str(path / _WEIGHTS)!r} is not a safetensors file ({exc}).") from None

    backbone_config = BackboneConfig(**{**fitted["backbone_config_"],
                                        "device": params["device"],
                                        "trust_remote_code": params["trust_remote_code"]})
    # A learned layer mix keeps every mixed layer's statistics.
    n_mixed = tensors["head.state_mean"].numel() // int(fitted["d_model_"])
    net = head_net(estimator, int(fitted["d_model_"]), int(fitted["n_outputs_"]),
                   device=backbone_config.resolved_device(), n_mixed_layers=n_mixed)
    net.initialize()
    head_state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    try:
        net.module_.load_state_dict(head_state)
    except RuntimeError as exc:
        raise _Malformed(f"{str(path / _WEIGHTS)!r} does not hold this head's weights "
                         f"({exc}).") from None
    net.trim_for_prediction()

    estimator.net_ = net
    for name in ("loss_curve_", "validation_loss_curve_", "best_validation_loss_", "n_iter_",
                 "n_folds_", "n_trainable_params_", "d_model_", "n_outputs_", "n_features_in_",
                 "prompt_template_", "backbone_fingerprint_"):
        setattr(estimator, name, fitted[name])
    if not isinstance(estimator.prompt_template_, str):
        raise _Malformed(f"{str(path / _CONFIG)!r}: prompt_template_ is not a string.")
    if fitted["feature_names_in_"] is not None:
        estimator.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)
    estimator.shrinkage_ = np.asarray(fitted["shrinkage_"], dtype=np.float64)
    alpha = fitted["anchor_alpha_"]
    estimator.anchor_alpha_ = None if alpha is None else np.asarray(alpha, dtype=np.float64)
    estimator.anchor_pooling_ = fitted["anchor_pooling_"]
    scale = fitted["anchor_scale_"]
    estimator.anchor_scale_ = None if scale is None else np.asarray(scale, dtype=np.float64)
    estimator.backbone_config_ = backbone_config
    estimator.target_ndim_ = 1 if fitted["y_1d"] else 2
    estimator.lora_adapters_ = None
    if fitted.get("lora_adapters_") is not None:
        from .lora import LoraAdapters

        estimator.lora_adapters_ = LoraAdapters.from_saved(
            fitted["lora_adapters_"], load_tensors(files[_ADAPTERS]))
    estimator.target_mean_ = tensors["y_mean"].numpy()
    estimator.target_scale_ = tensors["y_scale"].numpy()
    estimator.calibration_ = None
    if fitted["calibration_"] is not None:
        from .uncertainty import Calibration

        estimator.calibration_ = Calibration.from_saved(
            fitted["calibration_"],
            {k[len("calibration."):]: v.numpy() for k, v in tensors.items()
             if k.startswith("calibration.")})
    return estimator
