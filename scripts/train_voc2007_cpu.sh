#!/usr/bin/env bash
# The CPU run that produced checkpoints/: all five variants, frozen EfficientNet-Lite0 (stage 1 only),
# features computed once and shared by the five (exact: no augmentation while the backbone is frozen).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/voc2007}
python -m train all --dataset voc2007 --data-root "$DATA" \
  --stage2-epochs 0 --stage1-augment false --cache-features true \
  --num-workers 1 --group voc2007-cpu --save-half true "${@:2}"
