"""scripts/train_voc2007_cpu_v2.sh: its configs resolve to what it promises, and its status
command tells done, partial and missing runs apart (the recipe spans sessions)."""
import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import VARIANTS
from train.cli import config_for

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_voc2007_cpu_v2.sh"
CONFIGS = ROOT / "train" / "configs" / "voc2007-cpu-v2"


@pytest.mark.parametrize("variant", VARIANTS)
def test_cpu_v2_configs_are_lite2_at_448_with_a_cut_it_has(variant):
    config, _ = config_for(["--config-dir", str(CONFIGS), "--variant", variant])
    assert (config.backbone, config.image_size, config.group) == ("efficientnet_lite2", 448, "voc2007-cpu-v2")
    # G-CAM's step runs three views already: it trains on the image's own (a cost choice, stated in its YAML)
    assert config.data_root.endswith("voc2007-full") and config.cache_views == (1 if variant == "gcam" else 4)
    assert (config.eval_batch_size, config.num_workers) == (1, 0)  # extraction: 84 against 132 ms/img on 2 cores
    assert config.finetune == "top:18" and config.seeds == 3 and not config.stage1_augment


def test_status_tells_done_partial_and_missing_runs(tmp_path):
    group = tmp_path / "voc2007-cpu-v2"
    (group / "baseline").mkdir(parents=True)
    (group / "baseline" / "eval.json").write_text(json.dumps(
        {"selected_epoch": 31, "metrics": {"map": 0.8812}, "train_seconds": 1800}))
    (group / "seed1" / "ggnn").mkdir(parents=True)
    torch.save({"epoch": 7, "history": {"rows": []}}, group / "seed1" / "ggnn" / "checkpoint.pt")
    (group / "feature_cache").mkdir()
    torch.save(torch.zeros(1), group / "feature_cache" / "abc.pt")
    torch.save(torch.zeros(1), group / "feature_cache" / "def.chunk0000-of-0002.pt")
    (group / ".locks").mkdir()
    (group / ".locks" / "seed0-ggnn.lock").touch()  # left by a worker that has ended: not running
    with (group / ".locks" / "seed1-mlgcn.lock").open("a") as held:  # a worker training it now
        fcntl.flock(held, fcntl.LOCK_EX)
        out = subprocess.run(["bash", str(SCRIPT), "status"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OUT": str(tmp_path), "SEEDS": "2"})
    assert out.returncode == 0, out.stderr
    lines = {line.split()[2] + "/" + line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("  seed")}
    assert "done" in lines["baseline/0"] and "88.12" in lines["baseline/0"] and "30 min" in lines["baseline/0"]
    assert "partial" in lines["ggnn/1"] and "7 epoch" in lines["ggnn/1"] and "resumes there" in lines["ggnn/1"]
    assert "training now" in lines["mlgcn/1"] and "to do" in lines["ggnn/0"]
    assert "to do" in lines["gcam/1"] and len(lines) == 2 * len(VARIANTS)
    assert "1 of 10 runs done" in out.stdout and "1 finished tensor(s), 1 chunk(s)" in out.stdout


def test_parallel_workers_share_the_runs_without_repeating_one(tmp_path):
    """`run` with WORKERS=2: every run is trained exactly once (each claimed by a flock), a finished
    run is skipped, and the report comes once all are done. `python -m train` is a stand-in here that
    logs its call, holds the run a moment and writes eval.json; anything else goes to real Python."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.log"
    real = subprocess.run(["bash", "-c", "command -v python"], capture_output=True, text=True).stdout.strip()
    (fake / "python").write_text(f"""#!/usr/bin/env bash
if [[ "$1 $2 $3" == "-m train fit" ]]; then
  args=" $* "; variant=$(sed 's/.* --variant \\([^ ]*\\) .*/\\1/' <<< "$args")
  seed=$(sed 's/.* --seed \\([^ ]*\\) .*/\\1/' <<< "$args"); group=$(sed 's/.* --group \\([^ ]*\\) .*/\\1/' <<< "$args")
  echo "fit $seed $variant threads=$OMP_NUM_THREADS" >> {log}
  sleep 0.3
  mkdir -p "$OUT/$group/$variant"
  echo '{{"selected_epoch": 1, "metrics": {{"map": 0.5}}, "train_seconds": 60}}' > "$OUT/$group/$variant/eval.json"
elif [[ "$1 $2 $3" == "-m train report" ]]; then
  echo "report" >> {log}
else
  exec {real} "$@"
fi
""")
    (fake / "python").chmod(0o755)
    out_dir = tmp_path / "runs"
    (out_dir / "voc2007-cpu-v2" / "ggnn").mkdir(parents=True)  # seed 0 of ggnn is done already
    (out_dir / "voc2007-cpu-v2" / "ggnn" / "eval.json").write_text(json.dumps(
        {"selected_epoch": 1, "metrics": {"map": 0.5}, "train_seconds": 60}))
    env = {**os.environ, "OUT": str(out_dir), "SEEDS": "2", "WORKERS": "2", "PATH": f"{fake}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(SCRIPT), "run"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    fits = sorted(line.rsplit(" ", 1)[0] for line in calls if line.startswith("fit"))
    expected = sorted(f"fit {seed} {v}" for seed in range(2) for v in VARIANTS if (seed, v) != (0, "ggnn"))
    assert fits == expected  # each once, the finished one not at all
    threads = {line.rsplit("=", 1)[1] for line in calls if line.startswith("fit")}
    assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 2))}  # the cores split between the two
    assert calls[-1] == "report" and calls.count("report") == 1
    assert "10 of 10 runs done" in out.stdout


@pytest.mark.parametrize("workers", ["0", "two", "-1"])
def test_a_worker_count_that_is_not_a_positive_number_is_refused_in_one_line(tmp_path, workers):
    out = subprocess.run(["bash", str(SCRIPT), "run"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OUT": str(tmp_path), "WORKERS": workers})
    assert out.returncode == 2 and out.stderr.strip() == f"WORKERS={workers}: must be a whole number of 1 or more"
    assert not (tmp_path / "voc2007-cpu-v2").exists()


def test_diagnose_script_refuses_an_unknown_variant_before_any_work(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "diagnose_checkpoints.sh"), str(tmp_path), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "VARIANTS": "gcam gcamm"})
    assert out.returncode == 2 and out.stderr.startswith("VARIANTS: no variant named gcamm (there are: baseline")


def test_study_table_pairs_each_change_with_the_shipped_run_of_its_seed():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_table", ROOT / "scripts" / "study_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)

    def result(selection, val):
        return {"selection_map": selection, "metrics": {"map": val}}

    results = {"ssgrl-shipped-s0": result(0.80, 0.85), "ssgrl-shipped-s1": result(0.90, 0.86),
               "ssgrl-dropout0-s0": result(0.81, 0.87), "ssgrl-dropout0-s1": result(0.88, 0.86),
               "ssgrl-wd1e-3-s2": result(0.99, 0.99),  # no shipped run of seed 2: no pair
               "ssgrl-steps0": result(0.5, 0.5)}  # not a seeded run
    paired = table.paired_differences(results)
    assert list(paired) == ["ssgrl-dropout0"]
    assert [(s, round(d_sel, 6), round(d_val, 6)) for s, d_sel, d_val in paired["ssgrl-dropout0"]] == [
        (0, 0.01, 0.02), (1, -0.02, 0.0)]
    recipe = {("ssgrl", 2): result(0.90, 0.90)}  # the recipe's SSGRL run of seed 2 (its stage-1 record) as the shipped one
    assert [(s, round(d, 6)) for s, d, _ in table.paired_differences(results, recipe)["ssgrl-wd1e-3"]] == [(2, 0.09)]
    # another variant's change pairs with that variant's shipped run only, never SSGRL's or the recipe's
    others = {**results, "ggnn-steps1-s0": result(0.83, 0.88), "ggnn-shipped-s0": result(0.82, 0.89),
              "mlgcn-tau0.4-s2": result(0.70, 0.70)}
    paired = table.paired_differences(others, recipe)
    assert [(s, round(d_sel, 6), round(d_val, 6)) for s, d_sel, d_val in paired["ggnn-steps1"]] == [(0, 0.01, -0.01)]
    assert "mlgcn-tau0.4" not in paired and "ggnn-shipped" not in paired


@pytest.mark.parametrize("env, message", [
    ({"RUNS": "shipped dropot0"}, "RUNS: no study run named dropot0"),
    ({"PROFILE": "voc2012"}, "PROFILE: voc2012 is not a study profile (voc2007-cpu or voc2007-cpu-v2)")])
def test_study_script_refuses_unknown_names_before_any_run(tmp_path, env, message):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh")], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "OUT": str(tmp_path / "out"), **env})
    assert out.returncode == 2 and out.stderr.startswith(message) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("env, message", [
    ({"PAIRS": "lite2-224 lite3-448"}, "PAIRS: no setting named lite3-448"),
    ({"WORKERS": "two"}, "WORKERS=two: must be a whole number")])
def test_backbone_comparison_refuses_unknown_settings_before_any_run(tmp_path, env, message):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "compare_backbones_cpu.sh")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "OUT": str(tmp_path / "out"), **env})
    assert out.returncode == 2 and out.stderr.startswith(message) and not (tmp_path / "out").exists()
