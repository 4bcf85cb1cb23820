"""Markdown report comparing the variants of a run group, per class (like Table 8 of Viel's report).

Layout of a run group (``python -m train all [--seeds N]``)::

    runs/<group>/<variant>/              first seed: eval.json [+ eval_scores.npz]
    runs/<group>/seed<S>/<variant>/      further seeds (S = the seed value), same files

``eval_scores.npz`` holds ``scores`` (N, C) float probabilities on the evaluation split in
dataset order, ``targets`` (N, C) int8 in {1, 0, -1} and ``ids`` (N,) image ids (a str array; not
pickled objects), the same images in the same order for every variant and seed of a group.

``write_report(group)`` writes ``report.md`` (summary, "Seeds" section, per-class AP) and
``report.json`` with the numbers of the "Seeds" section, so an app can show them without
recomputing. All values in report.json are fractions in [0, 1] (the markdown shows percent /
percentage points); nan is written as null. Keys:

- ``group`` (str), ``dataset``, ``split`` (str or null), ``num_images`` (int or null): from the
  first seed's eval.json of the first variant.
- ``variants``: variant names in report order.
- ``seeds``: ``{variant: {"seeds": [int or null, ...], "runs": [run folder relative to the group,
  ...], "map" | "cf1" | "of1": {"values": [...one per run...], "mean": float, "std": float or null
  (sample std, ddof=1; null with one seed), "n": int, "low" | "high": the 95% Student-t interval of
  the mean over seeds (null with one seed)}}}``; runs are ordered first seed first, then
  ``seed<S>`` folders by S.
- ``finetune``: null, or ``{variant: {"stage1_map" | "final_map" | "difference": {"values", "mean",
  "std", "n"}, "finetune": the trained backbone part, "minutes": [per run]}}`` from eval.json's
  ``stage1`` (the best frozen-backbone model of each run) against its selected final model.
- ``bootstrap``: ``{"reference": "baseline" or null, "num_samples": int, "confidence": float,
  "seed": int (RNG seed of the resampling), "p_value": str (its definition), "skipped": str or null
  (why no comparison was made at all, e.g. no baseline), "comparisons": {variant: {...}}}`` with
  one entry per graph variant (every variant but the reference). An entry is either
  ``{"skipped": "<reason>"}`` (e.g. eval_scores.npz missing) or ``{"skipped": null, "difference",
  "low", "high", "p_value", "map_a" (reference mAP, mean over its seeds), "map_b" (this variant's),
  "num_samples", "num_valid", "confidence", "seed", "num_images", "num_seeds_a", "num_seeds_b",
  "verdict" ("better" | "worse" | "not distinguishable"), "runs_a", "runs_b" (run folders used),
  "runs_without_scores" (run folders of either model left out because they lack
  eval_scores.npz)}``; ``difference`` = variant - reference mAP on the full evaluation split and
  [``low``, ``high``] its paired bootstrap interval (see ``mlc.metrics.paired_bootstrap``).
- ``diagnostics``: ``{variant: the "diagnostics" entry of its first seed's eval.json}`` (map
  localisation, flip consistency, graph ablation; see ``mlc.diagnostics``), for the variants that have one.
- ``disagreement``: ``mlc.diagnostics.disagreement`` over the first seed of every variant, plus
  ``"skipped": null`` and ``"left_out"`` (variants without eval_scores.npz); or ``{"skipped": reason}``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlc.diagnostics_record import json_clean, num, pct, read_diagnostics
from mlc.diagnostics import disagreement
from mlc.metrics import bootstrap_versus_reference, seed_interval, seed_summary
from mlc.formats import EVAL_FORMAT, check_format
from mlc.models import list_models, reference_model

SCORES_FILE = "eval_scores.npz"
SEED_METRICS = (("mAP", "map"), ("CF1", "cf1"), ("OF1", "of1"))
P_VALUE_DEFINITION = "two-sided: min(1, 2 * min(share of resamples with difference <= 0, share with >= 0))"
_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class SeedRun:
    """One evaluated run of a variant: its seed (None if eval.json does not say), folder and eval.json."""

    variant: str
    seed: int | None
    run_dir: Path
    result: dict


def _ordered(found: dict[str, Any]) -> dict[str, Any]:
    registered = list_models()
    order = [v for v in registered if v in found] + [v for v in found if v not in registered]
    return {v: found[v] for v in order}


def load_results(group_dir: Path) -> dict[str, dict]:
    """eval.json of every variant folder in a group (the first seed), in the canonical variant order."""
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(group_dir).glob("*/eval.json"))}
    for name, result in found.items():
        check_format(result, "eval.json", EVAL_FORMAT, where=f"{name}/eval.json")
    return _ordered(found)


def _seed_folders(group_dir: Path) -> list[tuple[int, Path]]:
    folders = []
    for p in Path(group_dir).iterdir():
        m = _SEED_DIR.match(p.name)
        if m and p.is_dir():
            folders.append((int(m.group(1)), p))
    return sorted(folders)


def load_seed_runs(group_dir: Path) -> dict[str, list[SeedRun]]:
    """Every evaluated run of every variant: the first seed, then ``seed<S>/`` folders by S."""
    group_dir = Path(group_dir)
    runs: dict[str, list[SeedRun]] = {}
    for variant, result in load_results(group_dir).items():
        runs.setdefault(variant, []).append(SeedRun(variant, result.get("seed"), group_dir / variant, result))
    for s, folder in _seed_folders(group_dir):
        for path in sorted(folder.glob("*/eval.json")):
            result = json.loads(path.read_text())
            runs.setdefault(path.parent.name, []).append(SeedRun(path.parent.name, result.get("seed", s), path.parent, result))
    return _ordered(runs)


def _rel(run: SeedRun, group_dir: Path) -> str:
    try:
        return run.run_dir.relative_to(group_dir).as_posix()
    except ValueError:
        return str(run.run_dir)


def seed_statistics(runs: dict[str, list[SeedRun]], group_dir: Path) -> dict[str, dict]:
    """Per variant: seeds, run folders and mean / sample std / n of mAP, CF1, OF1 over its runs."""
    out = {}
    for variant, items in runs.items():
        entry: dict[str, Any] = {"seeds": [r.seed for r in items], "runs": [_rel(r, group_dir) for r in items]}
        for _, key in SEED_METRICS:
            values = [r.result["metrics"].get(key) for r in items]
            mean, std, n = seed_summary(values)
            low, high = seed_interval(values)
            entry[key] = {"values": [json_clean(v) for v in values], "mean": json_clean(mean), "std": json_clean(std), "n": n,
                          "low": json_clean(low), "high": json_clean(high)}
        out[variant] = entry
    return out


def finetune_statistics(runs: dict[str, list[SeedRun]]) -> dict[str, dict] | None:
    """Per variant, over its seeds: mAP of the best frozen-backbone model (eval.json "stage1") and of
    the selected model after stage 2, and their paired difference; None when no run has a stage 2."""
    out = {}
    for variant, items in runs.items():
        pairs = [(r.result["stage1"]["metrics"]["map"], r.result["metrics"]["map"]) for r in items
                 if isinstance(r.result.get("stage1"), dict)]
        if not pairs:
            continue
        entry = {}
        for key, values in (("stage1_map", [a for a, _ in pairs]), ("final_map", [b for _, b in pairs]),
                            ("difference", [b - a for a, b in pairs])):
            mean, std, n = seed_summary(values)
            entry[key] = {"values": values, "mean": json_clean(mean), "std": json_clean(std), "n": n}
        entry["finetune"] = items[0].result.get("backbone_trained")
        entry["minutes"] = [round(r.result.get("train_seconds", 0) / 60, 2) for r in items]
        out[variant] = entry
    return out or None


def finetune_section(stats: dict[str, dict] | None) -> list[str]:
    if not stats:
        return []
    lines = ["## Frozen backbone vs fine-tuned", "",
             "Stage 1 = the best epoch with the backbone frozen; final = the epoch the selection split chose "
             "over both stages (so final >= stage 1 on the selection split, not necessarily on this one). "
             "mAP in percent, mean ± sample std over seeds.", "",
             "| variant | stage 1 (frozen) | final | final - stage 1 (pp) | seeds | minutes per run |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant, e in stats.items():
        def fmt(d, pp=False):
            mean, std = d["mean"], d["std"]
            text = f"{100 * mean:+.2f}" if pp else f"{100 * mean:.2f}"
            return text + ("" if std is None else f" ± {100 * std:.2f}")
        minutes = e["minutes"]
        lines.append(f"| {variant} | {fmt(e['stage1_map'])} | {fmt(e['final_map'])} | {fmt(e['difference'], True)} | "
                     f"{e['final_map']['n']} | {sum(minutes) / len(minutes):.1f} |")
    return lines


def _load_scores(run_dir: Path) -> tuple[dict[str, np.ndarray] | None, str]:
    """(arrays, "") or (None, why not)."""
    path = run_dir / SCORES_FILE
    if not path.is_file():
        return None, f"no {SCORES_FILE}"
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: np.asarray(z[k]) for k in ("scores", "targets", "ids")}
    except (OSError, ValueError, KeyError) as e:
        return None, f"unreadable {SCORES_FILE} ({e})"
    s, t, ids = data["scores"], data["targets"], data["ids"]
    if s.ndim != 2 or s.shape != t.shape or ids.shape != (s.shape[0],):
        return None, f"{SCORES_FILE} has inconsistent shapes (scores {s.shape}, targets {t.shape}, ids {ids.shape})"
    return data, ""


def bootstrap_comparisons(
    runs: dict[str, list[SeedRun]],
    group_dir: Path,
    reference: str | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of every other variant's mAP against ``reference``, pooled over seeds.

    Only runs with ``eval_scores.npz`` take part; a comparison is skipped (with the reason) when
    either model has none, or when its images or targets differ from the reference's.
    """
    reference = reference or reference_model()
    out: dict[str, Any] = {"reference": reference if reference in runs else None, "num_samples": num_samples,
                           "confidence": confidence, "seed": seed, "p_value": P_VALUE_DEFINITION,
                           "skipped": None, "comparisons": {}}
    others = [v for v in runs if v != reference]
    if reference not in runs:
        out["skipped"] = f"no `{reference}` variant in this group to compare against"
        return out
    if not others:
        out["skipped"] = f"no variant besides `{reference}`"
        return out

    def collect(variant: str):
        arrays, used, missing, problems = [], [], [], []
        for r in runs[variant]:
            data, why = _load_scores(r.run_dir)
            if data is None:
                if why == f"no {SCORES_FILE}":
                    missing.append(_rel(r, group_dir))
                else:
                    problems.append(f"{_rel(r, group_dir)} ({why})")
            else:
                arrays.append(data)
                used.append(_rel(r, group_dir))
        return arrays, used, missing, problems

    ref_arrays, ref_used, ref_missing, ref_problems = collect(reference)
    if not ref_arrays:
        reason = f"`{reference}` has no readable {SCORES_FILE} (" + "; ".join(
            [f"missing in {r}" for r in ref_missing] + ref_problems) + ")"
        out["comparisons"] = {v: {"skipped": reason} for v in others}
        return out
    ids, targets = ref_arrays[0]["ids"], ref_arrays[0]["targets"]

    def mismatch(data: dict[str, np.ndarray]) -> str:
        if data["ids"].shape != ids.shape or not np.array_equal(data["ids"], ids):
            return "image ids differ"
        if not np.array_equal(data["targets"], targets):
            return "targets differ"
        return ""

    bad_ref = [f"{run} ({mismatch(d)})" for d, run in zip(ref_arrays, ref_used) if mismatch(d)]
    if bad_ref:
        reason = f"the runs of `{reference}` were not evaluated on the same images: " + "; ".join(bad_ref)
        out["comparisons"] = {v: {"skipped": reason} for v in others}
        return out

    candidates, extra = {}, {}
    for variant in others:
        arrays, used, missing, problems = collect(variant)
        problems += [f"{run} ({mismatch(d)} from `{reference}`)" for d, run in zip(arrays, used) if mismatch(d)]
        if problems:
            out["comparisons"][variant] = {"skipped": "; ".join(problems)}
        elif not arrays:
            out["comparisons"][variant] = {"skipped": f"no {SCORES_FILE} in " + ", ".join(missing) + " (older run?)"}
        else:
            candidates[variant] = [d["scores"] for d in arrays]
            extra[variant] = {"runs_a": ref_used, "runs_b": used, "runs_without_scores": ref_missing + missing}
    if candidates:
        ref_scores = [d["scores"] for d in ref_arrays]
        results = bootstrap_versus_reference(ref_scores, candidates, targets, num_samples, seed, confidence)
        for variant, res in results.items():
            out["comparisons"][variant] = {"skipped": None, **res.to_dict(), **extra[variant]}
    out["comparisons"] = {v: out["comparisons"][v] for v in others}
    return out


def seeds_analysis(group_dir: Path, num_samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """The content of report.json (see the module docstring)."""
    group_dir = Path(group_dir)
    runs = load_seed_runs(group_dir)
    first = next(iter(runs.values()))[0].result if runs else {}
    return {
        "group": group_dir.name,
        "dataset": first.get("dataset"),
        "split": first.get("split"),
        "num_images": first.get("num_images"),
        "variants": list(runs),
        "seeds": seed_statistics(runs, group_dir),
        "finetune": finetune_statistics(runs),
        "bootstrap": bootstrap_comparisons(runs, group_dir, reference_model(), num_samples, seed, confidence),
        "diagnostics": {v: record.to_dict() for v, items in runs.items()
                        if (record := read_diagnostics(items[0].result)) is not None},
        "disagreement": group_disagreement(runs),
    }


def group_disagreement(runs: dict[str, list[SeedRun]], top: int = 12) -> dict[str, Any]:
    """``mlc.diagnostics.disagreement`` over the first seed of every variant (``eval_scores.npz``)."""
    loaded, missing = {}, []
    for variant, items in runs.items():
        data, why = _load_scores(items[0].run_dir)
        if data is None:
            missing.append(f"{variant} ({why})")
        else:
            loaded[variant] = data
    if len(loaded) < 2:
        return {"skipped": "fewer than two variants with eval_scores.npz" + (f": {', '.join(missing)}" if missing else "")}
    first = next(iter(loaded.values()))
    if any(not np.array_equal(d["ids"], first["ids"]) for d in loaded.values()):
        return {"skipped": "the variants' eval_scores.npz hold different images"}
    classes = next(iter(runs.values()))[0].result["metrics"]["classes"]
    result = disagreement({v: d["scores"] for v, d in loaded.items()}, [str(i) for i in first["ids"]], classes,
                          first["targets"], top=top)
    return {"skipped": None, "left_out": missing, **result}


def _pp(x: float, sign: bool = True) -> str:
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _verdict_words(verdict: str) -> str:
    return {"better": "interval excludes 0: better", "worse": "interval excludes 0: worse"}.get(
        verdict, "interval includes 0: not distinguishable")


def seeds_section(analysis: dict[str, Any]) -> list[str]:
    """Markdown lines of the "Seeds" section for ``seeds_analysis(...)``."""
    stats = analysis["seeds"]
    names = list(stats)
    if not names:
        return []
    lines = ["## Seeds", "",
             "Over training seeds, in percent: mean ± sample standard deviation (n = number of seeds); the "
             "interval of the mean is Student's t over seeds (`mlc.metrics.seed_interval`).", "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key in SEED_METRICS:
        cells = []
        for n in names:
            m = stats[n][key]
            if m["n"] == 0:
                cells.append("n/a")
            elif m["std"] is None:
                cells.append(f"{100 * m['mean']:.2f} (n={m['n']})")
            else:
                cells.append(f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f} (n={m['n']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if label == "mAP" and any(stats[n][key].get("low") is not None for n in names):
            lines.append("| mAP, 95% interval of the mean over seeds | " + " | ".join(
                "n/a" if stats[n][key].get("low") is None else f"[{100 * stats[n][key]['low']:.2f}, {100 * stats[n][key]['high']:.2f}]"
                for n in names) + " |")
    lines.append("| seeds | " + " | ".join(
        ", ".join("n/a" if s is None else str(s) for s in stats[n]["seeds"]) for n in names) + " |")
    single = [n for n in names if len(stats[n]["runs"]) < 2]
    lines.append("")
    if len(single) == len(names):
        lines.append("Only one seed per variant: the seed-to-seed spread is unknown, so the intervals below "
                     "cover only the choice of evaluation images, not training noise.")
    elif single:
        listed = ", ".join(f"`{n}`" for n in single)
        lines.append(f"Only one seed for {listed}: its seed-to-seed spread is unknown.")
    else:
        counts = ", ".join(f"`{n}` {len(stats[n]['runs'])}" for n in names)
        lines.append(f"Seeds per variant: {counts}.")

    boot = analysis["bootstrap"]
    ref = boot["reference"]
    lines += ["", f"### mAP difference from `{ref or reference_model()}` (paired bootstrap over images)", ""]
    if boot["skipped"]:
        lines.append(f"Bootstrap skipped: {boot['skipped']}.")
        return lines
    done = {v: c for v, c in boot["comparisons"].items() if c.get("skipped") is None}
    skipped = {v: c["skipped"] for v, c in boot["comparisons"].items() if c.get("skipped") is not None}
    if done:
        any_result = next(iter(done.values()))
        conf = round(100 * boot["confidence"])
        lines += [
            f"{boot['num_samples']} resamples (RNG seed {boot['seed']}), each drawing the "
            f"{any_result['num_images']} evaluation images with replacement, the same images for both models; "
            "a model's mAP on a resample is the mean over its seeds' mAPs on it "
            f"(`{ref}`: {any_result['num_seeds_a']} seed(s)). "
            f"Δ = variant − `{ref}` mAP on the full split, in percentage points, with its {conf}% percentile "
            "interval; p is the two-sided bootstrap p-value. The interval reflects the finite evaluation set "
            "(and averages seed noise in the means), not the spread between seeds.", "",
            f"| variant | seeds | ΔmAP (pp) | {conf}% interval (pp) | p | verdict |", "|---" * 6 + "|"]
        for v, c in done.items():
            floor = 1 / c["num_valid"] if c["num_valid"] else 0
            p = "n/a" if c["p_value"] is None else (f"< {floor:.3g}" if c["p_value"] < floor else f"{c['p_value']:.3f}")
            interval = "n/a" if c["low"] is None else f"[{_pp(c['low'])}, {_pp(c['high'])}]"
            lines.append(f"| {v} | {c['num_seeds_b']} | {_pp(c['difference'])} | {interval} | {p} | "
                         f"{_verdict_words(c['verdict'])} |")
        left_out = sorted({r for c in done.values() for r in c["runs_without_scores"]})
        if left_out:
            lines += ["", f"Runs left out for lack of `{SCORES_FILE}`: {', '.join(left_out)}."]
    if skipped and not done and len(set(skipped.values())) == 1:
        lines.append(f"Bootstrap skipped for every variant: {next(iter(skipped.values()))}.")
    elif skipped:
        lines += ([""] if done else []) + [f"- `{v}`: bootstrap skipped: {why}." for v, why in skipped.items()]
    return lines


def seeing_section(analysis: dict[str, Any], classes: list[str]) -> list[str]:
    """Markdown lines of "What the models see" (eval.json "diagnostics" of each variant's first seed,
    and where the methods disagree)."""
    diag = analysis.get("diagnostics") or {}
    lines: list[str] = []
    if diag:
        names = list(diag)
        loc = {n: d.get("localization") or {} for n, d in diag.items()}
        with_boxes = [n for n in names if "method" in loc[n]]
        ref = loc[with_boxes[0]] if with_boxes else {}
        first = diag[names[0]]
        lines += ["## What the models see", "",
                  f"First seed of each variant, on the {first.get('num_images', '?')} evaluation images. Each method's own "
                  "map (CAM, Grad-CAM or attention) as the app shows it: its positive evidence (ReLU), brought onto the "
                  "image. A map with no positive cell is empty and counts as a miss. **Pointing game**: "
                  "share of positive (image, class) pairs whose map maximum lies within "
                  f"{100 * ref.get('tolerance', 0):.0f}% of the image's longer side of a box of the class (mean over "
                  "classes, Zhang et al. 2016); **box energy**: share of the map's positive part inside the class's "
                  "boxes. The **Grad-CAM** rows score Grad-CAM for every method, so the methods compare on one explainer "
                  "(for ggnn it is its own map). A random map and a centre map (Gaussian at the image centre) give the "
                  "scale. **Flip cosine**: "
                  "map of the image against the flipped-back map of its mirror image (positive pairs; 1 = mirrors "
                  "perfectly); **scale cosine**: the map resized to the map of the image rescaled as in G-CAM; "
                  "**L_A**: G-CAM's flip and scale terms at "
                  f"{first.get('input_size', '?')} px, in each map's own units (compare CAM methods with each other). "
                  "**No graph**: the same trained model with its label graph replaced by the identity (GCN) or "
                  "by no edges (GGNN), without retraining.", "",
                  "| | " + " | ".join(names) + " | random map | centre map |", "|---" * (len(names) + 3) + "|"]

        def row(label: str, cell, extra: tuple[str, str] = ("", "")) -> str:
            return f"| {label} | " + " | ".join(cell(n) for n in names) + f" | {extra[0]} | {extra[1]} |"

        lines.append(row("map", lambda n: diag[n].get("map", "")))
        if with_boxes:
            for label, key in (("pointing game (%)", "pointing"), ("box energy (%)", "energy")):
                lines.append(row(label, lambda n, k=key: pct((loc[n].get("method") or {}).get(k)),
                                 (pct(ref["random"].get(key)), pct(ref["centre"].get(key)))))
            if any(loc[n].get("grad_cam") for n in with_boxes):
                for label, key in (("pointing game, Grad-CAM (%)", "pointing"), ("box energy, Grad-CAM (%)", "energy")):
                    lines.append(row(label, lambda n, k=key: pct((loc[n].get("grad_cam") or {}).get(k)),
                                     (pct(ref["random"].get(key)), pct(ref["centre"].get(key)))))
            lines.append(row("positive pairs with boxes", lambda n: str((loc[n].get("method") or {}).get("pairs", ""))))
        lines.append(row("flip cosine", lambda n: num(diag[n]["flip"].get("cosine"), ".3f")))
        lines.append(row("L_A (flip)", lambda n: num(diag[n]["flip"].get("la"), ".3g")))
        if any(diag[n].get("scale") for n in names):
            size = next(diag[n]["scale"]["size"] for n in names if diag[n].get("scale"))
            lines.append(row(f"scale cosine ({size} px)", lambda n: num((diag[n].get("scale") or {}).get("cosine"), ".3f")))
            lines.append(row("L_A (scale)", lambda n: num((diag[n].get("scale") or {}).get("la"), ".3g")))
        lines.append(row("mAP (%)", lambda n: pct((diag[n].get("graph") or {}).get("map")) if diag[n].get("graph") else "–"))
        lines.append(row("mAP, no graph (%)", lambda n: pct(diag[n]["graph"]["map_identity"]) if diag[n].get("graph") else "–"))
        lines.append(row("graph's share (pp)", lambda n: _pp(diag[n]["graph"]["difference"]) if diag[n].get("graph") else "–"))
        if with_boxes:
            lines += ["", "### Pointing game per class (%)", "",
                      "| class | " + " | ".join(with_boxes) + " | random map | centre map |",
                      "|---" * (len(with_boxes) + 3) + "|"]
            for c, cls in enumerate(classes):
                cells = [pct(loc[n]["method"]["per_class"]["pointing"][c]) for n in with_boxes]
                cells += [pct(ref[s]["per_class"]["pointing"][c]) for s in ("random", "centre")]
                lines.append(f"| {cls} | " + " | ".join(cells) + " |")
        lines += ["", "### Flip cosine per class (positive pairs)", "",
                  "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for c, cls in enumerate(classes):
            lines.append(f"| {cls} | " + " | ".join(num(diag[n]["flip"]["per_class"]["cosine"][c], ".3f")
                                                     for n in names) + " |")
        lines += _faithfulness_table(diag)
        graphs = [n for n in names if diag[n].get("graph")]
        if graphs:
            lines += ["", "### AP change from the label graph per class (pp: AP with the graph − AP without)", "",
                      "| class | " + " | ".join(graphs) + " |", "|---" * (len(graphs) + 1) + "|"]
            for c, cls in enumerate(classes):
                cells = []
                for n in graphs:
                    pc = diag[n]["graph"]["per_class"]
                    a, b = pc["ap"][c], pc["ap_identity"][c]
                    cells.append("n/a" if a is None or b is None else _pp(a - b))
                lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    dis = analysis.get("disagreement") or {}
    if dis.get("images"):
        methods = dis["methods"]
        lines += (["", "## Where the methods disagree", ""] if lines else ["## Where the methods disagree", ""])
        lines += [f"Predicted label sets at p ≥ {dis['threshold']}: every method predicts the same set on "
                  f"{pct(dis['agree_all'])}% of the {dis['num_images']} images. Mean Jaccard similarity of two methods' sets:", "",
                  "| | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for a in methods:
            lines.append(f"| {a} | " + " | ".join(f"{dis['pairwise_jaccard'][a][b]:.2f}" for b in methods) + " |")
        lines += ["", "The most disputed images (labels on which the methods split):", "",
                  "| image | true labels | " + " | ".join(methods) + " |", "|---" * (len(methods) + 2) + "|"]
        for im in dis["images"]:
            cells = [", ".join(im["predicted"][m]) or "–" for m in methods]
            lines.append(f"| {im['id']} ({im['split_labels']}) | {', '.join(im['true'] or []) or '–'} | " + " | ".join(cells) + " |")
    return lines


def _faithfulness_table(diag: dict[str, Any]) -> list[str]:
    """"Faithfulness and sanity" (eval.json diagnostics' ``faithfulness`` / ``sanity``): one row per
    method, the reference maps measured on each method's own model."""
    names = [n for n, d in diag.items() if (d.get("faithfulness") or {}).get("maps")]
    if not names:
        return []
    first = diag[names[0]]["faithfulness"]

    def auc(n: str, source: str, curve: str) -> str:
        maps = diag[n]["faithfulness"]["maps"]
        entry = maps.get(source) or (maps["own"] if source == "grad-cam" else None)  # ggnn's own map is Grad-CAM
        return "n/a" if entry is None else num(entry[curve]["auc"]["value"], ".3f")

    def interval(n: str, curve: str) -> str:
        a = diag[n]["faithfulness"]["maps"]["own"][curve]["auc"]
        return "n/a" if a["low"] is None else f"{a['low']:.3f}–{a['high']:.3f}"

    def wins(n: str, ref: str) -> str:
        b = diag[n]["faithfulness"]["beats"]["own"]
        return f"{pct(b['deletion'][ref]['value'])} / {pct(b['insertion'][ref]['value'])}"

    def sanity(n: str, check: str, key: str) -> str:
        own = ((diag[n].get("sanity") or {}).get("explainers") or {}).get("own")
        return "n/a" if own is None else num(own[check][key], ".2f")

    def depends(n: str) -> str:
        own = ((diag[n].get("sanity") or {}).get("explainers") or {}).get("own") or {}
        return {True: "yes", False: "no"}.get(own.get("depends_on_model"), "n/a")

    def cost(n: str) -> str:
        return f"{diag[n]['faithfulness']['seconds'] + ((diag[n].get('sanity') or {}).get('seconds') or 0):.0f}"

    rows = [
        ("deletion AUC, own map (↓)", lambda n: auc(n, "own", "deletion")),
        ("  95% interval", lambda n: interval(n, "deletion")),
        ("deletion AUC, Grad-CAM (↓)", lambda n: auc(n, "grad-cam", "deletion")),
        ("deletion AUC, random map", lambda n: auc(n, "random", "deletion")),
        ("deletion AUC, centre map", lambda n: auc(n, "centre", "deletion")),
        ("insertion AUC, own map (↑)", lambda n: auc(n, "own", "insertion")),
        ("  95% interval", lambda n: interval(n, "insertion")),
        ("insertion AUC, Grad-CAM (↑)", lambda n: auc(n, "grad-cam", "insertion")),
        ("insertion AUC, random map", lambda n: auc(n, "random", "insertion")),
        ("insertion AUC, centre map", lambda n: auc(n, "centre", "insertion")),
        ("own map beats random, % of pairs (del / ins)", lambda n: wins(n, "random")),
        ("own map beats centre, % of pairs (del / ins)", lambda n: wins(n, "centre")),
        ("Spearman, randomised classifier (median)", lambda n: sanity(n, "model_randomization", "median")),
        ("map depends on the model (median abs. below 0.5)", depends),
        ("Spearman, present vs absent class (median)", lambda n: sanity(n, "class_discrimination", "median")),
        ("cost (s)", cost),
    ]
    lines = ["", "### Faithfulness and sanity", "",
             f"On {first['pairs']} seeded present (image, class) pairs. **Deletion / insertion** (Petsiuk et al. 2018): "
             "the class probability as the pixels a map ranks first are blurred away (Gaussian, sigma "
             f"{first['blur_sigma_px']:g} px at the model's input) or revealed from the blurred image; area under the "
             "curve over the share of pixels (deletion: lower is better; insertion: higher is better). The random and "
             "centre maps are measured on each method's own model, so compare a method with its own references. "
             "**Sanity checks** (Adebayo et al. 2018): rank correlation of each map with the map of the same model "
             "with its classifier re-drawn (the GCN output for ML-GCN / G-CAM, the head for the others) — a map that "
             "explains the model changes, so a low value is good — and with the map of a random absent class of the "
             "image (a class-specific map differs). Faithful here means the map ranks the pixels the score depends "
             "on; it says nothing about whether they lie on the object (the pointing game does).", "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell(n) for n in names) + " |" for label, cell in rows]
    return lines


def comparison_report(results: dict[str, dict], title: str = "Run group", analysis: dict[str, Any] | None = None) -> str:
    """The markdown report; ``analysis`` (from ``seeds_analysis``) adds the "Seeds" section."""
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
        cells = [f"**{pct(v)}**" if v == best else pct(v) for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| selected epoch | " + " | ".join(str(results[n].get("selected_epoch", "")) for n in names) + " |")
    lines.append("| train time (min) | " + " | ".join(f"{results[n].get('train_seconds', 0) / 60:.1f}" for n in names) + " |")
    if analysis is not None:
        lines += ["", "The summary and per-class tables show the first seed; the Seeds section covers all of them."]
        section = seeds_section(analysis)
        if section:
            lines += [""] + section
        section = finetune_section(analysis.get("finetune"))
        if section:
            lines += [""] + section
        section = seeing_section(analysis, classes)
        if section:
            lines += [""] + section
    lines += ["", "## Per-class AP", "", "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, cls in enumerate(classes):
        values = [results[n]["metrics"]["ap"][i] for n in names]
        present = [v for v in values if v is not None]
        best = max(present) if present else None
        cells = [f"**{pct(v)}**" if v is not None and v == best else pct(v) for v in values]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    lines.append("| **mAP** | " + " | ".join(pct(results[n]["metrics"]["map"]) for n in names) + " |")
    missing = first["metrics"].get("classes_without_positives") or []
    if missing:
        lines += ["", f"Classes without positives in this split (left out of mAP): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def write_report(group_dir: Path, num_samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Path:
    """Write ``report.md`` and ``report.json`` into the group folder; returns the report.md path.

    ``num_samples`` / ``seed`` / ``confidence``: the paired bootstrap's resamples, RNG seed and level.
    """
    group_dir = Path(group_dir)
    path = group_dir / "report.md"
    results = load_results(group_dir)
    analysis = seeds_analysis(group_dir, num_samples, seed, confidence) if results else None
    path.write_text(comparison_report(results, title=f"Run group `{group_dir.name}`", analysis=analysis))
    if analysis is not None:
        (group_dir / "report.json").write_text(json.dumps(analysis, indent=2, allow_nan=False) + "\n")
    return path
