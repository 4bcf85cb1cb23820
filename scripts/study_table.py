"""A Markdown table of a study's runs (one folder each, as scripts/study_ssgrl.sh lays them out):
selection mAP (what decides), the epoch it peaked at, the named classes' AP on the selection split,
and val mAP (reported, never used to choose).

Usage: python scripts/study_table.py RUNS_DIR [CLASS ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc.metrics import average_precision
from train.constants import SELECTION_SCORES


def main() -> None:
    root, names = Path(sys.argv[1]), sys.argv[2:]
    head = ["run", "selection mAP", "peak epoch / trained", *(f"{c} AP (selection, n)" for c in names), "val mAP"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for run in sorted(p for p in root.iterdir() if (p / "eval.json").is_file()):
        result = json.loads((run / "eval.json").read_text())
        metrics = result["metrics"]
        scores = np.load(run / SELECTION_SCORES)
        ap = average_precision(scores["logits"], scores["targets"])
        cells = []
        for name in names:
            c = metrics["classes"].index(name)
            n = int(scores["targets"][:, c].sum())
            cells.append(f"{100 * ap[c]:.1f} ({n})" if n else "-")
        epochs = len(json.loads((run / "metrics.json").read_text())) if (run / "metrics.json").is_file() else "?"
        print(f"| {run.name} | {100 * result['selection_map']:.2f} | {result['selected_epoch']} / {epochs} | "
              + " | ".join(cells) + f" | {100 * metrics['map']:.2f} |")


if __name__ == "__main__":
    main()
