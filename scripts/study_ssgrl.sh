#!/usr/bin/env bash
# Issue 18, item 3: why SSGRL trails the baseline. Stage 1 only (frozen EfficientNet-Lite0 at 224 px,
# the CPU profile train/configs/voc2007-cpu, cached maps shared by every run), one change at a time
# against the shipped SSGRL settings, and the baseline beside it. Decisions read the selection split
# (split.json) only: its mAP, the epoch it peaks at, and the rare classes' AP (cow, sheep, the two that
# collapse on val). Resumes: a finished run (eval.json) is skipped. Prints a table at the end.
#   nice -n 19 scripts/study_ssgrl.sh > runs/study_ssgrl.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/voc2007}
OUT=${OUT:-runs/study-ssgrl}
COMMON=(--config-dir train/configs/voc2007-cpu --data-root "$DATA" --output-dir "$OUT" --group study
        --cache-dir "$OUT/feature_cache" --stage2-epochs 0 --diagnostics false --seeds 1 --resume)
run() {  # name variant [flags...]
  local name=$1 variant=$2; shift 2
  [[ -f "$OUT/study/$name/eval.json" ]] && { echo "done: $name"; return; }
  python -m train fit --variant "$variant" "${COMMON[@]}" "$@"
  # a run's folder is named after its variant: keep each study run under its own name
  rm -rf "$OUT/study/$name"; mv "$OUT/study/$variant" "$OUT/study/$name"
}
run baseline baseline
run ssgrl ssgrl                                            # shipped: lr 1e-3, 15 epochs, d 256, dropout 0.5
run ssgrl-lr1e-4 ssgrl --stage1-lr 1e-4 --stage1-min-lr 1e-5 --stage1-epochs 30
run ssgrl-wd1e-3 ssgrl --weight-decay 1e-3
run ssgrl-steps0 ssgrl --model-param steps=0
python scripts/study_table.py "$OUT/study" cow sheep
