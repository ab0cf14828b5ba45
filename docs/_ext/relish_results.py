"""Sphinx extension: the benchmark pages' tables, generated from the results.

At ``builder-inited`` it writes, under ``docs/benchmarks/generated/``:

- ``<stem>.rst`` for every ``benchmarks/results/<stem>.md`` that a
  benchmark script wrote (converted from its Markdown: headings, bullet
  lists, pipe tables and images), so every figure of the report pages is the
  committed result file's, never a hand copy;
- ``pearson-<backbone>.inc``: the main table of ``benchmarks.run``
  (methods x tasks, mean ± std of Pearson over seeds, best in bold), and
  ``trust.inc``: the default against the best ridge on the same states,
  both computed from ``benchmarks/results/<backbone>.json``;
  ``finetuned.inc``: the fine-tuned encoder (run once, in the SmolLM2
  table) against the default on each frozen backbone, with fit times.

Nothing here is hand-edited: rerun a benchmark, rebuild the docs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.report import LABELS  # noqa: E402  (the one label map)
RESULTS = ROOT / "benchmarks" / "results"
BACKBONES = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct",
             "all-minilm-l6-v2": "all-MiniLM-L6-v2"}
TASKS = ["stsb", "mlqe-en-de", "mlqe-ro-en", "mlqe-si-en", "vader-tweets", "vader-movies"]

_INLINE = re.compile(r"(`[^`]+`|\*\*[^*]+\*\*|!\[[^\]]*\]\([^)]*\)|\[[^\]]+\]\([^)]+\))")


def _escape(text):
    return re.sub(r"([\\*_|`<>])", r"\\\1", text)


def inline(text):
    """Markdown inline markup (code, bold, links) as reStructuredText."""
    out = []
    for part in _INLINE.split(text):
        if not part:
            continue
        if part.startswith("`"):
            out.append(f"``{part[1:-1]}``" if part[1:-1].strip() else _escape(part))
        elif part.startswith("**"):
            out.append(f"**{_escape(part[2:-2])}**")
        elif re.fullmatch(r"\[([^\]]+)\]\(([^)]+)\)", part):
            label, url = re.fullmatch(r"\[([^\]]+)\]\(([^)]+)\)", part).groups()
            out.append(f"`{_escape(label)} <{url}>`__")
        elif part.startswith("!["):
            out.append(_escape(part))
        else:
            out.append(_escape(part))
    return "".join(out)


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def list_table(rows, header=True):
    lines = [".. list-table::", "   :class: results"]
    if header:
        lines.append("   :header-rows: 1")
    lines.append("")
    for row in rows:
        for k, cell in enumerate(row):
            text = inline(cell) if cell else "\\"
            lines.append(("   * - " if k == 0 else "     - ") + text)
    return lines + [""]


def markdown_to_rst(markdown, image_dir):
    """The subset of Markdown the benchmark scripts write, as reST."""
    lines = markdown.splitlines()
    out, i = [], 0
    underline = {1: "=", 2: "-", 3: "~", 4: "^"}
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading:
            title = inline(heading.group(2))
            level = min(len(heading.group(1)), 4)
            out += [title, underline[level] * max(len(title), 4), ""]
            i += 1
            continue
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_cells(r) for r in block if not re.match(r"^\|[\s:|-]+\|?$", r)]
            width = max(len(r) for r in rows)
            rows = [r + [""] * (width - len(r)) for r in rows]
            out += [""] + list_table(rows)
            continue
        image = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$", line)
        if image:
            out += [f".. image:: {image_dir}/{Path(image.group(2)).name}",
                    f"   :alt: {image.group(1)}", ""]
            i += 1
            continue
        bullet = re.match(r"^(\s*)[-*]\s+(.*)$", line)
        if bullet:
            indent = len(bullet.group(1)) // 2 * 2
            out.append(" " * indent + "- " + inline(bullet.group(2)))
            i += 1
            # A nested list needs a blank line around it in reST.
            if i < len(lines) and re.match(r"^\s*[-*]\s", lines[i]):
                nxt = len(re.match(r"^(\s*)", lines[i]).group(1)) // 2 * 2
                if nxt != indent:
                    out.append("")
            continue
        if line.strip().startswith("```"):
            i += 1
            code = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append("   " + lines[i])
                i += 1
            out += ["::", ""] + code + [""]
            i += 1
            continue
        if not line.strip() and out and out[-1].startswith(" ") is False:
            out.append("")
        else:
            out.append(inline(line) if line.strip() else "")
        i += 1
    return "\n".join(out) + "\n"


def _summary(slug):
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import summarise

    results = json.loads((RESULTS / f"{slug}.json").read_text(encoding="utf-8"))
    return results, summarise(results)


def _order(values, reference):
    return sorted(values, key=lambda v: reference.index(v) if v in reference else len(reference))


def pearson_table(slug):
    """Methods x tasks, Pearson mean ± std over seeds, best per task in bold."""
    results, summary = _summary(slug)
    tasks = _order({t for t, _ in summary}, TASKS)
    methods = _order({m for _, m in summary}, list(LABELS))
    best = {}
    for task in tasks:
        means = [summary[(task, m)]["pearson"][0] for m in methods
                 if (task, m) in summary and "skipped" not in summary[(task, m)]
                 and summary[(task, m)]["pearson"][0] is not None]
        best[task] = max(means) if means else None
    rows = [["method"] + tasks]
    for method in methods:
        row = [LABELS.get(method, method)]
        for task in tasks:
            cell = summary.get((task, method))
            if cell is None or "skipped" in cell:
                row.append("–")
                continue
            mean, std = cell["pearson"]
            if mean is None:
                row.append("n/a")
                continue
            text = f"{mean:.3f}" + (f" ± {std:.3f}" if std else "")
            row.append(f"**{text}**" if abs(mean - best[task]) < 5e-4 else text)
        rows.append(row)
    return "\n".join(list_table(rows))


#: The ridges on the same backbone that the default is held against: on the
#: last layer's pooled states, on the default's own layers, and on the single
#: layer chosen by leave-one-out on the training rows.
RIDGES = ("ridge_mean", "ridge_last", "ridge_layers", "ridge_best_layer")
RIDGE_NAMES = {"ridge_mean": "last layer, mean", "ridge_last": "last layer, last token",
               "ridge_layers": "default's layers", "ridge_best_layer": "best layer by LOO"}


def trust_table():
    """The default against the best ridge on the same states, per task."""
    rows = [["backbone", "task", "RELISH default", "best ridge", "NRMSE default / ridge",
             "TF-IDF + ridge", "holds"]]
    for slug, name in BACKBONES.items():
        if not (RESULTS / f"{slug}.json").exists():
            continue
        results, summary = _summary(slug)
        tasks = _order({t for t, _ in summary}, TASKS)
        for task in tasks:
            relish = summary.get((task, "relish"))
            ridges = [(m, summary[(task, m)]) for m in RIDGES if (task, m) in summary]
            if relish is None or not ridges:
                continue
            method, ridge = max(ridges, key=lambda kv: kv[1]["pearson"][0])
            tfidf = summary.get((task, "tfidf_ridge"))
            pearson, std = relish["pearson"]
            holds = (pearson >= ridge["pearson"][0] - 5e-4
                     and relish["nrmse"][0] <= ridge["nrmse"][0] + 5e-4
                     and relish["nrmse"][0] < 1)
            rows.append([name, task, f"{pearson:.3f} ± {std:.3f}",
                         f"{ridge['pearson'][0]:.3f} ({RIDGE_NAMES[method]})",
                         f"{relish['nrmse'][0]:.3f} / {ridge['nrmse'][0]:.3f}",
                         f"{tfidf['pearson'][0]:.3f}" if tfidf else "–",
                         "yes" if holds else "**no**"])
    return "\n".join(list_table(rows))


def _pm(cell):
    mean, std = cell["pearson"]
    return f"{mean:.3f}" + (f" ± {std:.3f}" if cell["n_runs"] > 1 else "")


def _default_or_last(summary, task):
    """``(cell, note)``: the default's summary on ``task``, else the earlier
    default's (``relish_last``) with a note, else ``(None, "")``."""
    if (task, "relish") in summary:
        return summary[(task, "relish")], ""
    if (task, "relish_last") in summary:
        return summary[(task, "relish_last")], " (last layer)"
    return None, ""


#: The results file whose table holds the fine-tuned encoder (run once).
FINETUNED_RESULTS = "smollm2-135m-instruct"


def finetuned_table(reference=FINETUNED_RESULTS):
    """Fine-tuned MiniLM against the default RELISH on each frozen backbone.

    Pearson (best of the row in bold), NRMSE, and fit times: the fine-tuned
    model trains every weight; RELISH's fit reads cached states, and its
    first fit also pays for encoding them (the task's recorded encoding).
    """
    results, summary = _summary(reference)
    others = {slug: _summary(slug) for slug in BACKBONES
              if slug != reference and (RESULTS / f"{slug}.json").exists()}
    rows = [["task", "fine-tuned MiniLM (seeds)",
             *[f"RELISH, {BACKBONES[s]}" for s in [reference, *others]],
             f"NRMSE fine-tuned / RELISH, {BACKBONES[reference]}", "fit s, fine-tuned",
             f"fit s, RELISH, {BACKBONES[reference]} (+ encoding)"]]
    for task in _order({t for t, m in summary if m == "finetuned_minilm"}, TASKS):
        tuned = summary[(task, "finetuned_minilm")]
        # The default, or the earlier default (last layer) where the default
        # has not run on the task yet, marked as such.
        picked = [_default_or_last(s, task) for s in [summary, *[o[1] for o in others.values()]]]
        relish = picked[0][0]
        if relish is None:
            continue
        cells = [tuned, *[c for c, _ in picked]]
        notes = ["", *[n for _, n in picked]]
        best = max(c["pearson"][0] for c in cells if c is not None)
        pearsons = ["–" if c is None else
                    (f"**{_pm(c)}**" if abs(c["pearson"][0] - best) < 5e-4 else _pm(c)) + n
                    for c, n in zip(cells, notes)]
        pearsons[0] += f" ({tuned['n_runs']})"
        encoding = results["tasks"][task].get("encoding", {}).get("seconds")
        rows.append([task, *pearsons,
                     f"{tuned['nrmse'][0]:.3f} / {relish['nrmse'][0]:.3f}",
                     f"{tuned['fit_time']:.0f}",
                     f"{relish['fit_time']:.0f}"
                     + (f" (+ {encoding:.0f})" if encoding else "")])
    return "\n".join(list_table(rows))


#: The two training regimes side by side, on a training subsample (``lora.inc``),
#: and the earlier, smaller subsample kept for comparison (``lora-train1000.inc``).
LORA_RESULTS = "smollm2-135m-instruct-train2000"
LORA_EARLIER = ["smollm2-135m-instruct-train1000"]
LORA_METHODS = ["relish_last", "relish_lora", "lora_linear", "finetuned_minilm", "ridge_mean"]
LORA_LABELS = {"relish_last": "RELISH, frozen (last layer)", "relish_lora": "RELISH, LoRA",
               "lora_linear": "LoRA + linear head", "finetuned_minilm": "fine-tuned MiniLM",
               "ridge_mean": "ridge, mean pool (frozen)"}


def lora_table(slug=LORA_RESULTS):
    """Frozen RELISH, LoRA + RELISH, LoRA + a linear head and the fine-tuned
    encoder on the same training subsample: Pearson, NRMSE, trainable
    parameters and their share of the backbone, fit and predict seconds."""
    _, summary = _summary(slug)
    backbone = max((x.get("n_backbone_params", 0) for row in summary.values()
                    for x in row.get("extras", [])), default=0)
    rows = [["task", "method", "Pearson", "NRMSE", "trainable params",
             "share of backbone", "fit s", "predict s"]]
    for task in _order({t for t, _ in summary}, TASKS):
        for method in [m for m in LORA_METHODS if (task, m) in summary]:
            row = summary[(task, method)]
            n_params = max(row["n_params"])
            share = "–" if method == "finetuned_minilm" or not backbone \
                else f"{100 * n_params / backbone:.2f}%"
            rows.append([task, LORA_LABELS[method], _pm(row), f"{row['nrmse'][0]:.3f}",
                         f"{n_params:,}", share, f"{row['fit_time']:.0f}",
                         f"{row['predict_time']:.0f}"])
    return "\n".join(list_table(rows))


def generate(app=None):
    out = ROOT / "docs" / "benchmarks" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    for md in sorted(RESULTS.glob("*.md")):
        text = markdown_to_rst(md.read_text(encoding="utf-8"), "../../../benchmarks/results")
        (out / f"{md.stem}.rst").write_text(
            f".. Generated from benchmarks/results/{md.name}; do not edit.\n\n" + text,
            encoding="utf-8")
    for slug in BACKBONES:
        if (RESULTS / f"{slug}.json").exists():
            (out / f"pearson-{slug}.inc").write_text(pearson_table(slug) + "\n", encoding="utf-8")
    (out / "trust.inc").write_text(trust_table() + "\n", encoding="utf-8")
    if (RESULTS / f"{FINETUNED_RESULTS}.json").exists():
        (out / "finetuned.inc").write_text(finetuned_table() + "\n", encoding="utf-8")
    if (RESULTS / f"{LORA_RESULTS}.json").exists():
        (out / "lora.inc").write_text(lora_table() + "\n", encoding="utf-8")
    for slug in LORA_EARLIER:
        if (RESULTS / f"{slug}.json").exists():
            suffix = slug.rsplit("-", 1)[1]
            (out / f"lora-{suffix}.inc").write_text(lora_table(slug) + "\n", encoding="utf-8")


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "version": "1"}
