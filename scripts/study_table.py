"""A Markdown table of a study's runs (one folder each, as scripts/study.sh lays them out):
selection mAP (what decides), the epoch it peaked at, the named classes' AP on the selection split,
and val mAP (reported, never used to choose). Runs named ``<variant>-<change>-s<seed>`` (SEEDS) are
also compared with ``<variant>-shipped-s<seed>``, the variant's shipped settings on the same seed and
so the same selection split: a second table gives each change's mean paired difference over its seeds.
``--shipped-group runs/<group>``: take the shipped settings of each variant and seed from that recipe
group's own runs instead (the "stage1" record of ``<group>/<variant>`` and ``<group>/seed<S>/<variant>``:
the same configuration, seed and selection split, so a study need not train them again).

Usage: python scripts/study_table.py RUNS_DIR [CLASS ...] [--shipped-group runs/<group>]
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc.metrics import average_precision
from train.constants import SELECTION_SCORES
from train.report import load_seed_runs


def main() -> None:
    args = sys.argv[1:]
    shipped_group = None
    if "--shipped-group" in args:
        k = args.index("--shipped-group")
        shipped_group, args = Path(args[k + 1]), args[:k] + args[k + 2:]
    root, names = Path(args[0]), args[1:]
    head = ["run", "selection mAP", "peak epoch / trained", *(f"{c} AP (selection, n)" for c in names), "val mAP"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    runs = sorted(p for p in root.iterdir() if (p / "eval.json").is_file())
    results = {run.name: json.loads((run / "eval.json").read_text()) for run in runs}
    for run in runs:
        result = results[run.name]
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
    paired = paired_differences(results, shipped_stage1(shipped_group) if shipped_group else None)
    if paired:
        print("\n| change | seeds | selection mAP - shipped (per seed) | mean | val mAP - shipped (mean) |\n|---|---|---|---|---|")
        for change, rows in paired.items():
            sel = [100 * d for _, d, _ in rows]
            val = [100 * d for _, _, d in rows]
            print(f"| {change} | {', '.join(str(s) for s, _, _ in rows)} | {', '.join(f'{d:+.2f}' for d in sel)} | "
                  f"{np.mean(sel):+.2f} | {np.mean(val):+.2f} |")


def shipped_stage1(group: Path) -> dict[tuple[str, int], dict]:
    """{(variant, seed): the "stage1" record of the group's run of that variant and seed} (the runs that
    have one), from the group's runs as `train report` reads them."""
    return {(run.variant, int(run.seed)): run.result["stage1"]
            for runs in load_seed_runs(group).values() for run in runs
            if run.result.get("stage1") and run.seed is not None}


def paired_differences(results: dict[str, dict], shipped_by_seed: dict[tuple[str, int], dict] | None = None
                       ) -> dict[str, list[tuple[int, float, float]]]:
    """{change: [(seed, selection mAP - shipped's, val mAP - shipped's), ...]} over the seeds where both ran.
    The shipped run of a seed is the study's ``<variant>-shipped-s<seed>`` (the variant: the name up to
    its first "-"), or ``shipped_by_seed[(variant, seed)]`` (the recipe's own runs)."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for name, result in results.items():
        match = re.fullmatch(r"(.+)-s(\d+)", name)
        if not match or match.group(1).endswith("-shipped"):
            continue
        variant, seed = match.group(1).split("-")[0], int(match.group(2))
        shipped = (shipped_by_seed or {}).get((variant, seed)) or results.get(f"{variant}-shipped-s{seed}")
        if shipped is None:
            continue
        out.setdefault(match.group(1), []).append((
            seed, result["selection_map"] - shipped["selection_map"],
            result["metrics"]["map"] - shipped["metrics"]["map"]))
    return {change: sorted(rows) for change, rows in sorted(out.items())}


if __name__ == "__main__":
    main()
