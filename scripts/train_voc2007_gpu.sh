#!/usr/bin/env bash
# GPU recipe: all five variants, two stages at 448 px (stage 1 the head on the frozen backbone,
# stage 2 the whole backbone with the head), bf16 autocast, channels_last, in two settings whose
# configs are YAML files, not flags here (tests/test_gpu_recipe.py runs them on the tiny fixture):
#   lite2      train/configs/voc2007-gpu/ (voc2007/gpu.yaml): the shipped backbone, EfficientNet-Lite2
#              at 448 px, train -> val (the shipped checkpoints' protocol).
#   resnet101  train/configs/voc2007-gpu-resnet101/ (voc2007/gpu-resnet101.yaml): the papers' setting,
#              ResNet-101 at 448 px (torchvision ImageNet weights, downloaded), trainval -> test.
#              Published figure to approach: ML-GCN 94.0 mAP on VOC 2007 test, ResNet-101 at 448 px
#              (Chen et al., CVPR 2019).
#
# Expected cost: estimates from FLOPs and saved activations measured by bench/backbone_flops.py
# (not GPU measurements; a training step ~ 3 x forward FLOPs, at a sustained 60 TFLOP/s bf16, which
# an A100 / H100 reaches for ResNet-101 but not for the Lite's depthwise convolutions):
#   Lite2 @ 448: 4.60 GFLOPs (2.30 GMACs) / image forward, 4.8 M params; activations kept for the
#     backward 210 MiB / image under bf16 autocast -> ~7 GiB at batch 32. Compute ~0.5 s per epoch of
#     2,250 images: decoding the JPEGs bounds it (plan ~5 s per epoch with 8 workers); 5 variants x
#     23-30 epochs with evaluation and diagnostics: about 30 min, 8 GB of GPU memory.
#   ResNet-101 @ 448: 62.4 GFLOPs (31.2 GMACs) / image forward, 42.5 M params; 286 MiB / image
#     -> ~9 GiB at batch 32 (+0.7 GB weights and Adam state). Compute ~14 s per epoch of 4,510 images
#     (trainval less the selection part); 5 variants x 23-30 epochs: ~35 min of compute, about 1 h
#     with evaluation and data loading; 12 GB of GPU memory or more.
#
#   scripts/train_voc2007_gpu.sh [lite2|resnet101|both] [extra flags for python -m train all]
#   DATA=data/voc2007 (default) is where the project's download code puts VOC 2007 (trainval + test).
# Afterwards: python -m train push runs/<group> --repo user/repo (HF_TOKEN), or --dry-run first.
set -euo pipefail
cd "$(dirname "$0")/.."
# name=config dir; read by tests/test_gpu_recipe.py
SETTINGS=(
  "lite2=train/configs/voc2007-gpu"
  "resnet101=train/configs/voc2007-gpu-resnet101"
)
WHICH=${1:-both}
DATA=${DATA:-data/voc2007}
# the project's own download code (mlc.data.voc.VOCDataset, through torchvision's VOC reader)
python - "$DATA" <<'PY'
import sys
from mlc.data.voc import VOCDataset
for split in ("trainval", "test"):
    print(f"VOC 2007 {split}: {len(VOCDataset(sys.argv[1], split, download=True))} images")
PY
for setting in "${SETTINGS[@]}"; do
  name=${setting%%=*}
  dir=${setting#*=}
  if [[ "$WHICH" == both || "$WHICH" == "$name" ]]; then
    python -m train all --config-dir "$dir" --data-root "$DATA" --device cuda "${@:2}"
  fi
done
