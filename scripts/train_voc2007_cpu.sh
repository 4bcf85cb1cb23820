#!/usr/bin/env bash
# The CPU run that produced checkpoints/: all five variants on a frozen EfficientNet-Lite0 (stage 1
# only; see train/configs/voc2007-cpu/), then the comparison report, then the shipped copies.
#   scripts/train_voc2007_cpu.sh [VOC_ROOT] [extra flags for python -m train all]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/voc2007}
python -m train all --config-dir train/configs/voc2007-cpu --data-root "$DATA" "${@:2}"
