"""The README's results table, generated from the committed results.

The README shows a selection of rows of ``benchmarks/results/<slug>.json``
(Pearson, mean ± std over seeds, best of each column in bold), between two
comment lines. This module writes that block, so no figure on the front
door is typed by hand:

    python -m benchmarks.readme            # rewrite the README's table
    python -m benchmarks.readme --check    # exit 1 if it differs

The labels are :data:`benchmarks.report.LABELS`, the documentation's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .report import LABELS
from .run import summarise

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.rst"
BEGIN = ".. begin results table (python -m benchmarks.readme writes it)"
END = ".. end results table"
#: The results file, the table's corner title, and the rows shown, in order.
SLUG = "smollm2-135m-instruct"
TITLE = "SmolLM2-135M, full"
METHODS = ("relish", "relish_last", "ridge_layers", "ridge_mean", "ridge_last", "tfidf_ridge",
           "finetuned_minilm", "mlp_mean", "zeroshot", "rail_fewshot")
TASKS = ("stsb", "mlqe-en-de", "mlqe-ro-en", "mlqe-si-en", "vader-tweets", "vader-movies")


def cells(slug=SLUG, methods=METHODS, tasks=TASKS):
    """``{method: [cell per task]}``: mean ± std (the mean alone for one
    run), the best mean of each column in bold."""
    summary = summarise(json.loads((RESULTS / f"{slug}.json").read_text(encoding="utf-8")))
    best = {task: max(summary[(task, m)]["pearson"][0] for m in methods
                      if (task, m) in summary and summary[(task, m)]["pearson"][0] is not None)
            for task in tasks}
    out = {}
    for method in methods:
        row = []
        for task in tasks:
            cell = summary.get((task, method))
            if cell is None or cell["pearson"][0] is None:
                row.append("–")
                continue
            mean, std = cell["pearson"]
            text = f"{mean:.3f}" + (f" ± {std:.3f}" if cell["n_runs"] > 1 else "")
            row.append(f"**{text}**" if abs(mean - best[task]) < 5e-4 else text)
        out[method] = row
    return out


def table(slug=SLUG, title=TITLE, methods=METHODS, tasks=TASKS):
    """The table as a reStructuredText simple table."""
    rows = [[title, *tasks]] + [[LABELS[m], *c] for m, c in cells(slug, methods, tasks).items()]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)

    def line(row):
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()

    return "\n".join([rule, line(rows[0]), rule, *map(line, rows[1:]), rule])


def replaced(readme_text, block):
    """``readme_text`` with the block between the markers replaced."""
    start = readme_text.index(BEGIN) + len(BEGIN)
    end = readme_text.index(END)
    return readme_text[:start] + "\n\n" + block + "\n\n" + readme_text[end:]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme",
                                     description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the README's table differs from the results")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = replaced(text, table())
    if args.check:
        if new != text:
            print("README.rst's results table differs from benchmarks/results; run "
                  "python -m benchmarks.readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
