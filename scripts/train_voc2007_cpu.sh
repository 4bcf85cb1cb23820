#!/usr/bin/env bash
# The CPU run that produced checkpoints/: all five variants on a frozen EfficientNet-Lite0 (stage 1
# only; see train/configs/voc2007-cpu/), the comparison report, then the shipped copies: exactly
# what `python -m train push --dry-run` would upload (weights in float16, config, eval.json, card).
#   scripts/train_voc2007_cpu.sh [VOC_ROOT] [extra flags for python -m train all]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/voc2007}
GROUP=runs/voc2007-cpu
python -m train all --config-dir train/configs/voc2007-cpu --data-root "$DATA" "${@:2}"
python -m train push "$GROUP" --dry-run
rm -rf checkpoints/*/
cp -r "$GROUP"/hub_upload/*/ checkpoints/
cp "$GROUP/report.md" checkpoints/REPORT.md
du -sh checkpoints
