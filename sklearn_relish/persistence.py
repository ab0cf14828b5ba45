"""Save and load a fitted regressor without pickle.

A saved model is a directory of two files:

- ``config.json``: the estimator's parameters, the fitted state that is not
  a tensor, the backbone's identity and the library versions;
- ``head.safetensors``: the head's weights, the target scaling and the
  uncertainty calibration's arrays;

and, for a regressor fitted with ``backbone_tuning="lora"``, a third:

- ``adapters.safetensors``: the LoRA adapters' weights (their settings and
  fingerprint are in ``config.json``). Such a model is written in format
  version 2, which releases that do not know adapters refuse to load rather
  than predict without them; a frozen-regime model stays version 1.

Loading it executes no code from the files (unlike unpickling), and the
backbone weights are never stored: they are loaded again from the backbone's
name on first use (and, with adapters, merged with them again).
"""

from __future__ import annotations

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

FORMAT_VERSION = 2
_CONFIG = "config.json"
_WEIGHTS = "head.safetensors"
_ADAPTERS = "adapters.safetensors"


def _versions():
    import sklearn
    import skorch
    import transformers

    from . import __version__

    return {"sklearn_relish": __version__, "scikit-learn": sklearn.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "skorch": skorch.__version__}


def save(estimator, path):
    """Write a fitted :class:`RelishRegressor` to the directory ``path``.

    The directory is written under a temporary name next to ``path`` and
    renamed at the end, so a failed write (disk full, no permission) leaves
    no partial model behind and does not touch an existing one until the
    new one is complete.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    from safetensors.torch import save_file

    path = Path(path)
    params = estimator.get_params(deep=False)
    params = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v)
              for k, v in params.items()}
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None  # a RandomState object is not JSON
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
        "n_trainable_params_": estimator.n_trainable_params_,
        "d_model_": estimator.d_model_,
        "n_outputs_": estimator.n_outputs_,
        "n_text_fields_": estimator.n_text_fields_,
        "n_features_in_": estimator.n_features_in_,
        "prompt_template_": estimator.prompt_template_,
        "backbone_fingerprint_": estimator.backbone_fingerprint_,
        "backbone_config_": asdict(estimator.backbone_config_),
        "feature_names_in_": (list(estimator.feature_names_in_)
                              if hasattr(estimator, "feature_names_in_") else None),
        "y_1d": estimator._y_1d,
        "calibration_": (None if getattr(estimator, "calibration_", None) is None
                         else estimator.calibration_.to_json()),
    }
    adapters = getattr(estimator, "lora_adapters_", None)
    if adapters is not None:
        fitted["lora_adapters_"] = adapters.describe()
    config = {"format": "sklearn-relish", "format_version": 1 if adapters is None else 2,
              "class": type(estimator).__name__, "params": params,
              "fitted": fitted, "versions": _versions()}
    tensors = {f"head.{k}": v.detach().cpu().contiguous()
               for k, v in estimator.net_.module_.state_dict().items()}
    tensors["y_mean"] = torch.as_tensor(estimator._y_mean, dtype=torch.float64)
    tensors["y_scale"] = torch.as_tensor(estimator._y_scale, dtype=torch.float64)
    if fitted["calibration_"] is not None:
        for name, value in estimator.calibration_.to_arrays().items():
            tensors[f"calibration.{name}"] = torch.as_tensor(value, dtype=torch.float64)

    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=parent))
    try:
        (tmp / _CONFIG).write_text(json.dumps(config, indent=1))
        save_file(tensors, str(tmp / _WEIGHTS))
        if adapters is not None:
            save_file(adapters.tensors, str(tmp / _ADAPTERS))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=parent))
            os.replace(path, old / "model")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path, device=None):
    """Load a regressor written by :func:`save`.

    Parameters
    ----------
    path : str or Path
    device : str, optional
        Overrides the saved ``device`` parameter (for example "cpu" for a
        model saved on a GPU machine). A CUDA device is mapped to the CPU
        when no GPU is present.
    """
    from safetensors.torch import load_file

    from .backbone import BackboneConfig
    from .estimator import RelishRegressor

    path = Path(path)
    try:
        config = json.loads((path / _CONFIG).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved sklearn-relish model: it has no "
            f"{_CONFIG}. Save one with RelishRegressor.save(path).") from None
    if config.get("format") != "sklearn-relish":
        raise ValueError(f"{str(path / _CONFIG)!r} is not a sklearn-relish model.")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was saved in format version {config['format_version']}, "
            f"newer than this sklearn-relish understands ({FORMAT_VERSION}). "
            "Upgrade sklearn-relish.")
    saved = config["versions"].get("sklearn_relish")
    current = _versions()["sklearn_relish"]
    if saved != current:
        warnings.warn(f"This model was saved with sklearn-relish {saved}; "
                      f"loading it with {current}.", UserWarning, stacklevel=2)

    params = dict(config["params"])
    # Saved before the anchor and shrinkage existed: fitted without them.
    params.setdefault("anchor", None)
    params.setdefault("shrinkage", None)
    if device is not None:
        params["device"] = device
    if str(params["device"]).startswith("cuda") and not torch.cuda.is_available():
        params["device"] = "cpu"
    estimator = RelishRegressor(**params)
    fitted = config["fitted"]
    tensors = load_file(str(path / _WEIGHTS))

    backbone_config = BackboneConfig(**{**fitted["backbone_config_"],
                                        "device": params["device"]})
    net = estimator._build_net(fitted["d_model_"], fitted["n_outputs_"],
                               device=backbone_config.resolved_device())
    net.initialize()
    head_state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    # A model saved before the anchor existed has no anchor buffers: the
    # fresh module's zero anchor and unit scale predict as it did.
    missing, unexpected = net.module_.load_state_dict(head_state, strict=False)
    if unexpected or set(missing) - {"anchor_weight", "anchor_bias", "output_scale"}:
        raise ValueError(f"{str(path / _WEIGHTS)!r} does not hold this head's weights "
                         f"(missing {missing}, unexpected {unexpected}).")
    net.trim_for_prediction()

    estimator.net_ = net
    # Saved before the rename: the same losses under their former names.
    for old, new in (("validation_scores_", "validation_loss_curve_"),
                     ("best_validation_score_", "best_validation_loss_")):
        if old in fitted:
            fitted[new] = fitted.pop(old)
    for name in ("loss_curve_", "validation_loss_curve_", "best_validation_loss_", "n_iter_",
                 "n_trainable_params_", "d_model_", "n_outputs_", "n_text_fields_",
                 "prompt_template_", "backbone_fingerprint_"):
        setattr(estimator, name, fitted[name])
    # Saved before the column contract: every field was read.
    estimator.n_features_in_ = fitted.get("n_features_in_", fitted["n_text_fields_"])
    if fitted["feature_names_in_"] is not None:
        estimator.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)
    estimator.shrinkage_ = np.asarray(fitted.get("shrinkage_", [1.0] * fitted["n_outputs_"]))
    alpha = fitted.get("anchor_alpha_")
    estimator.anchor_alpha_ = None if alpha is None else np.asarray(alpha)
    estimator.anchor_pooling_ = fitted.get("anchor_pooling_")
    scale = fitted.get("anchor_scale_")
    estimator.anchor_scale_ = None if scale is None else np.asarray(scale)
    estimator.backbone_config_ = backbone_config
    estimator._y_1d = fitted["y_1d"]
    estimator.lora_adapters_ = None
    if fitted.get("lora_adapters_") is not None:
        from .lora import LoraAdapters

        estimator.lora_adapters_ = LoraAdapters.from_saved(
            fitted["lora_adapters_"], load_file(str(path / _ADAPTERS)))
    estimator._y_mean = tensors["y_mean"].numpy()
    estimator._y_scale = tensors["y_scale"].numpy()
    # Saved before calibrated uncertainty: none (predict_interval says so).
    estimator.calibration_ = None
    if fitted.get("calibration_") is not None:
        from .uncertainty import Calibration

        estimator.calibration_ = Calibration.from_saved(
            fitted["calibration_"],
            {k[len("calibration."):]: v.numpy() for k, v in tensors.items()
             if k.startswith("calibration.")})
    return estimator
