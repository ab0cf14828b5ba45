"""Write a benchmark's results as JSON plus a Markdown table with machine info."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine():
    import sklearn
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command():
    return "python -m " + " ".join([sys.modules["__main__"].__spec__.name] + sys.argv[1:])


def write(name, results, table_lines, notes=(), echo=True):
    """Write ``results/<name>.json`` and ``results/<name>.md`` (and print the table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    payload = {"command": command(), "machine": info, "results": results}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    lines = [f"# {name}", "", f"Command: `{payload['command']}`", "",
             *table_lines, "", *notes, "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    if echo:
        print("\n".join(lines))


def device_name(device):
    """'NVIDIA H100 80GB HBM3' or 'CPU, 16 threads': what a timing ran on."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


#: How each method is named in every table: the documentation's pages and the
#: README's (``benchmarks/readme.py``) read this one map.
LABELS = {
    "relish": "RELISH (default)", "relish_last": "RELISH, last layer (earlier default)",
    "relish_tuned": "RELISH (grid-searched plain head)",
    "ridge_mean": "ridge, mean pool", "ridge_last": "ridge, last token",
    "ridge_layers": "ridge, default's layers", "ridge_best_layer": "ridge, best layer (LOO)",
    "tfidf_ridge": "TF-IDF + ridge", "mlp_mean": "MLP, mean pool",
    "finetuned_minilm": "fine-tuned MiniLM", "zeroshot": "zero-shot decode",
    "fewshot": "few-shot decode", "rail_zeroshot": "RAIL, zero-shot",
    "rail_fewshot": "RAIL, few-shot",
}
