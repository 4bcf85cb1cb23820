#!/usr/bin/env bash
# Add "what each method sees" (mlc.diagnostics: map localisation against the VOC boxes, flip
# consistency, the graph ablation) to the eval.json of every variant's first seed of the CPU run,
# without retraining, then rewrite the group report and the shipped copies in checkpoints/.
# New runs get the same numbers at the end of training (--diagnostics, on by default).
#   scripts/diagnose_voc2007_cpu.sh [VOC_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/voc2007}
GROUP=runs/voc2007-cpu
for variant in baseline ggnn ssgrl mlgcn gcam; do
  python -m train evaluate --model "$GROUP/$variant/model" --dataset voc2007 --data-root "$DATA" --split val \
    --num-workers 2 --output "$GROUP/$variant/eval.json" --merge
  cp "$GROUP/$variant/eval.json" "$GROUP/$variant/model/eval.json"
done
python -m train report "$GROUP"
python -m train push "$GROUP" --dry-run
rm -rf checkpoints/*/
cp -r "$GROUP"/hub_upload/*/ checkpoints/
cp "$GROUP/report.md" checkpoints/REPORT.md
cp "$GROUP/report.json" checkpoints/report.json
