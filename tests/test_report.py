"""train.report on a synthetic run group: first seed at <group>/<variant>/, more at <group>/seed<S>/<variant>/."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlc.metrics import evaluate, mean_average_precision
from train.report import comparison_report, load_results, load_seed_runs, write_report

CLASSES = ["aeroplane", "bicycle", "bird", "boat"]
N = 80
# how strongly each variant's scores follow the targets: ggnn clearly better, mlgcn like the baseline
STRENGTH = {"baseline": 0.3, "ggnn": 3.0, "mlgcn": 0.3}


def _targets() -> np.ndarray:
    rng = np.random.default_rng(123)
    targets = (rng.random((N, len(CLASSES))) < 0.3).astype(np.int8)
    targets[rng.random(targets.shape) < 0.05] = -1
    return targets


def _scores(variant: str, seed: int, targets: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([list(STRENGTH).index(variant), seed])
    logits = STRENGTH[variant] * (targets == 1) + rng.normal(size=targets.shape)
    return np.round(1 / (1 + np.exp(-logits)), 2).astype(np.float32)  # rounding makes ties


def _write_run(run: Path, variant: str, seed: int | None, scores_file: bool = True) -> None:
    targets = _targets()
    scores = _scores(variant, seed or 0, targets)
    run.mkdir(parents=True)
    result = {"model_name": variant, "dataset": "synthetic", "split": "val", "num_images": N,
              "selected_epoch": 2, "train_seconds": 60.0,
              "metrics": evaluate(scores, targets, classes=CLASSES).to_dict()}
    if seed is not None:
        result["seed"] = seed
    (run / "eval.json").write_text(json.dumps(result))
    if scores_file:
        ids = np.array([f"{i:06d}" for i in range(N)])
        np.savez(run / "eval_scores.npz", scores=scores, targets=targets, ids=ids)


def make_group(root: Path, seeds=(0, 1), variants=tuple(STRENGTH), with_scores=True) -> Path:
    group = root / "grp"
    for i, seed in enumerate(seeds):
        for v in variants:
            _write_run(group / v if i == 0 else group / f"seed{seed}" / v, v, seed, with_scores)
    return group


def _expected_maps(variant: str, seeds) -> list[float]:
    targets = _targets()
    return [mean_average_precision(_scores(variant, s, targets), targets) for s in seeds]


def _slow_differences(variant: str, seeds, num_samples: int, seed: int) -> np.ndarray:
    targets = _targets()
    idx = np.random.default_rng(seed).integers(0, N, size=(num_samples, N))
    ref = [_scores("baseline", s, targets) for s in seeds]
    mine = [_scores(variant, s, targets) for s in seeds]
    return np.array([np.mean([mean_average_precision(x[i], targets[i]) for x in mine])
                     - np.mean([mean_average_precision(x[i], targets[i]) for x in ref]) for i in idx])


def test_seed_section_and_report_json(tmp_path: Path) -> None:
    group = make_group(tmp_path, seeds=(0, 1))
    path = write_report(group, num_samples=60, seed=4)
    md = path.read_text()
    data = json.loads((group / "report.json").read_text())

    assert set(data) == {"group", "dataset", "split", "num_images", "variants", "seeds", "finetune", "bootstrap",
                         "diagnostics", "disagreement"}
    assert data["diagnostics"] == {}  # these eval.json files predate mlc.diagnostics
    assert data["disagreement"]["methods"] == ["baseline", "ggnn", "mlgcn"]  # from the first seeds' scores
    assert data["finetune"] is None and "Frozen backbone" not in md  # no run had a stage 2
    assert data["variants"] == ["baseline", "ggnn", "mlgcn"] and data["num_images"] == N
    assert data["group"] == "grp" and data["split"] == "val"
    # existing sections are still there
    header = next(line for line in md.splitlines() if line.startswith("| class |"))
    assert all(v in header for v in STRENGTH) and "| aeroplane |" in md and "## Summary" in md
    assert md.index("## Summary") < md.index("## Seeds") < md.index("## Per-class AP")

    for variant in STRENGTH:
        entry = data["seeds"][variant]
        assert entry["seeds"] == [0, 1] and entry["runs"] == [variant, f"seed1/{variant}"]
        maps = _expected_maps(variant, (0, 1))
        assert entry["map"]["values"] == pytest.approx(maps, abs=1e-12)
        assert entry["map"]["mean"] == pytest.approx(np.mean(maps), abs=1e-12)
        assert entry["map"]["std"] == pytest.approx(np.std(maps, ddof=1), abs=1e-12)
        assert entry["map"]["n"] == 2 and set(entry) == {"seeds", "runs", "map", "cf1", "of1"}
        assert f"{100 * np.mean(maps):.2f} ± {100 * np.std(maps, ddof=1):.2f} (n=2)" in md
        half = 12.706205 * np.std(maps, ddof=1) / np.sqrt(2)  # t(0.975, 1 degree of freedom)
        assert (entry["map"]["low"], entry["map"]["high"]) == pytest.approx((np.mean(maps) - half, np.mean(maps) + half), abs=1e-6)
        assert f"[{100 * (np.mean(maps) - half):.2f}, {100 * (np.mean(maps) + half):.2f}]" in md
        cf1 = [json.loads((group / r / "eval.json").read_text())["metrics"]["cf1"] for r in entry["runs"]]
        assert entry["cf1"]["mean"] == pytest.approx(np.mean(cf1)) and entry["of1"]["n"] == 2

    boot = data["bootstrap"]
    assert {"reference", "num_samples", "confidence", "seed", "p_value", "skipped", "comparisons"} <= set(boot)
    assert (boot["reference"], boot["num_samples"], boot["seed"], boot["skipped"]) == ("baseline", 60, 4, None)
    assert list(boot["comparisons"]) == ["ggnn", "mlgcn"]
    base_mean = np.mean(_expected_maps("baseline", (0, 1)))
    for variant in ("ggnn", "mlgcn"):
        c = boot["comparisons"][variant]
        assert c["skipped"] is None and c["num_seeds_a"] == c["num_seeds_b"] == 2
        assert c["runs_a"] == ["baseline", "seed1/baseline"] and c["runs_without_scores"] == []
        assert c["difference"] == pytest.approx(np.mean(_expected_maps(variant, (0, 1))) - base_mean, abs=1e-12)
        diffs = _slow_differences(variant, (0, 1), 60, 4)
        assert (c["low"], c["high"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-9)
        row = next(line for line in md.splitlines() if line.startswith(f"| {variant} | 2 |"))
        assert f"{100 * c['difference']:+.2f}" in row and f"[{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]" in row
    assert boot["comparisons"]["ggnn"]["verdict"] == "better"
    assert "interval excludes 0: better" in next(line for line in md.splitlines() if line.startswith("| ggnn | 2 |"))
    assert "60 resamples" in md and f"{N} evaluation images" in md


def test_load_results_is_first_seed_and_seed_folders_sort_numerically(tmp_path: Path) -> None:
    group = make_group(tmp_path, seeds=(0, 10, 2), variants=("baseline", "ggnn"))
    first = load_results(group)
    assert list(first) == ["baseline", "ggnn"] and all(r["seed"] == 0 for r in first.values())
    runs = load_seed_runs(group)
    assert [r.seed for r in runs["ggnn"]] == [0, 2, 10]
    assert [r.run_dir for r in runs["ggnn"]] == [group / "ggnn", group / "seed2" / "ggnn", group / "seed10" / "ggnn"]
    # the old call without the seed analysis still gives the old report
    md = comparison_report(first)
    assert "| class |" in md and "## Seeds" not in md


def test_single_seed_still_bootstraps_and_says_spread_unknown(tmp_path: Path) -> None:
    group = make_group(tmp_path, seeds=(0,))
    md = write_report(group, num_samples=40).read_text()
    data = json.loads((group / "report.json").read_text())
    assert data["seeds"]["ggnn"]["map"]["std"] is None and data["seeds"]["ggnn"]["map"]["n"] == 1
    assert "seed-to-seed spread is unknown" in md
    c = data["bootstrap"]["comparisons"]["ggnn"]
    assert c["skipped"] is None and c["num_seeds_b"] == 1 and c["low"] > 0
    diffs = _slow_differences("ggnn", (0,), 40, 0)
    assert (c["low"], c["high"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-9)


def test_missing_scores_skip_the_bootstrap_with_a_reason(tmp_path: Path) -> None:
    group = make_group(tmp_path, seeds=(0, 1))
    (group / "mlgcn" / "eval_scores.npz").unlink()
    (group / "seed1" / "mlgcn" / "eval_scores.npz").unlink()
    (group / "seed1" / "ggnn" / "eval_scores.npz").unlink()  # ggnn is pooled over its one remaining seed
    md = write_report(group, num_samples=30).read_text()
    data = json.loads((group / "report.json").read_text())
    comparisons = data["bootstrap"]["comparisons"]
    assert "eval_scores.npz" in comparisons["mlgcn"]["skipped"] and set(comparisons["mlgcn"]) == {"skipped"}
    assert "- `mlgcn`: bootstrap skipped" in md
    assert comparisons["ggnn"]["skipped"] is None and comparisons["ggnn"]["num_seeds_b"] == 1
    assert comparisons["ggnn"]["runs_without_scores"] == ["seed1/ggnn"]


def test_old_runs_without_seed_key_or_scores(tmp_path: Path) -> None:
    group = make_group(tmp_path, seeds=(None,), with_scores=False)
    md = write_report(group).read_text()
    data = json.loads((group / "report.json").read_text())
    assert data["seeds"]["baseline"]["seeds"] == [None]
    assert "Bootstrap skipped for every variant" in md
    assert all(c["skipped"] for c in data["bootstrap"]["comparisons"].values())


def test_group_without_baseline(tmp_path: Path) -> None:
    group = make_group(tmp_path, seeds=(0,), variants=("ggnn", "mlgcn"))
    md = write_report(group).read_text()
    data = json.loads((group / "report.json").read_text())
    assert data["bootstrap"]["reference"] is None and "baseline" in data["bootstrap"]["skipped"]
    assert "Bootstrap skipped" in md


def test_frozen_versus_finetuned_section(tmp_path: Path) -> None:
    group = make_group(tmp_path, seeds=(0, 1), variants=("baseline", "ggnn"))
    stage1 = {("baseline", 0): 0.50, ("baseline", 1): 0.52, ("ggnn", 0): 0.60, ("ggnn", 1): 0.61}
    for (variant, seed), value in stage1.items():
        path = (group / variant if seed == 0 else group / f"seed{seed}" / variant) / "eval.json"
        result = json.loads(path.read_text())
        result["stage1"] = {"selected_epoch": 3, "selection_map": 0.5, "metrics": {"map": value}}
        result["backbone_trained"] = "top:15"
        path.write_text(json.dumps(result))
    md = write_report(group, num_samples=20).read_text()
    data = json.loads((group / "report.json").read_text())["finetune"]
    finals = {v: _expected_maps(v, (0, 1)) for v in ("baseline", "ggnn")}
    for variant in ("baseline", "ggnn"):
        diffs = [finals[variant][k] - stage1[(variant, k)] for k in (0, 1)]
        assert data[variant]["difference"]["mean"] == pytest.approx(np.mean(diffs))
        assert data[variant]["difference"]["std"] == pytest.approx(np.std(diffs, ddof=1))
        assert data[variant]["stage1_map"]["values"] == [stage1[(variant, 0)], stage1[(variant, 1)]]
        assert data[variant]["finetune"] == "top:15"
    row = next(line for line in md.splitlines() if line.startswith("| ggnn | 60.50 ± 0.71"))
    assert f"{100 * np.mean(finals['ggnn']):.2f}" in row
