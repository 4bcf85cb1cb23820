#!/usr/bin/env bash
# The CPU run that produced checkpoints/: all five variants, 3 seeds each (train/configs/voc2007-cpu/):
# stage 1 trains the heads on a frozen EfficientNet-Lite0, stage 2 fine-tunes its top block with the
# head on cached lower-block maps. Then the comparison report (seeds, bootstrap intervals, frozen vs
# fine-tuned) and the shipped copies of the first seed: exactly what `python -m train push --dry-run`
# would upload (weights in float16, config, eval.json, card).
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
cp "$GROUP/report.json" checkpoints/report.json   # seeds and bootstrap intervals, read by the app
du -sh checkpoints
