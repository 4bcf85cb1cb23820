"""Markdown report comparing the variants of a run group, per class (like Table 8 of Viel's report)."""
from __future__ import annotations

import json
from pathlib import Path

from train.config import VARIANTS


def load_results(group_dir: Path) -> dict[str, dict]:
    """eval.json of every variant folder in a group, in the canonical variant order."""
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(group_dir).glob("*/eval.json"))}
    order = [v for v in VARIANTS if v in found] + [v for v in found if v not in VARIANTS]
    return {v: found[v] for v in order}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def comparison_report(results: dict[str, dict], title: str = "Run group") -> str:
    if not results:
        return f"# {title}\n\nNo evaluated variants yet.\n"
    names = list(results)
    first = next(iter(results.values()))
    classes = first["metrics"]["classes"]
    lines = [f"# {title}", "",
             f"Dataset `{first['dataset']}`, evaluated on split `{first['split']}` ({first['num_images']} images); "
             "models were selected on a held-out part of the training split, never on this one. "
             "AP in percent; mAP (non-interpolated, = scikit-learn) and mAP-VOC (all-point interpolated).", "",
             "## Summary", "", "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    rows = [("mAP", "map"), ("mAP-VOC", "map_voc"), ("CP", "cp"), ("CR", "cr"), ("CF1", "cf1"),
            ("OP", "op"), ("OR", "or_"), ("OF1", "of1"), ("CF1 top-3", "cf1_top3"), ("OF1 top-3", "of1_top3")]
    for label, key in rows:
        values = [results[n]["metrics"][key] for n in names]
        best = max(v for v in values if v is not None)
        cells = [f"**{_pct(v)}**" if v == best else _pct(v) for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| selected epoch | " + " | ".join(str(results[n].get("selected_epoch", "")) for n in names) + " |")
    lines.append("| train time (min) | " + " | ".join(f"{results[n].get('train_seconds', 0) / 60:.1f}" for n in names) + " |")
    lines += ["", "## Per-class AP", "", "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, cls in enumerate(classes):
        values = [results[n]["metrics"]["ap"][i] for n in names]
        present = [v for v in values if v is not None]
        best = max(present) if present else None
        cells = [f"**{_pct(v)}**" if v is not None and v == best else _pct(v) for v in values]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    lines.append("| **mAP** | " + " | ".join(_pct(results[n]["metrics"]["map"]) for n in names) + " |")
    missing = first["metrics"].get("classes_without_positives") or []
    if missing:
        lines += ["", f"Classes without positives in this split (left out of mAP): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def write_report(group_dir: Path) -> Path:
    group_dir = Path(group_dir)
    path = group_dir / "report.md"
    path.write_text(comparison_report(load_results(group_dir), title=f"Run group `{group_dir.name}`"))
    return path
