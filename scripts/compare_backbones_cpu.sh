#!/usr/bin/env bash
# Issue 18, item 1: the backbone and input size of the shipped models, chosen from the baseline after
# the CPU fine-tune. Trains the baseline of the CPU recipe v2 (train/configs/voc2007-cpu-v2: stage 1 on
# cached frozen maps, stage 2 the last three blocks on four cached views per photo) at each backbone
# and size below, seed 0, and prints selection mAP (what chooses), val mAP (reported) and minutes. The
# shipped pair (Lite2 at 448) and the previous one (Lite0 at 224, its own recipe: scripts/train_voc2007_cpu.sh)
# are read from their run groups when present; the others are trained here, each in its own group with its own
# feature cache. Resumes (a finished run is skipped, a cut one goes on from its checkpoint).
#   nice -n 10 scripts/compare_backbones_cpu.sh > runs/compare_backbones.log 2>&1 &
# PAIRS="lite2-224 lite0-448" picks which to train; WORKERS=2 trains two at once on 1 thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/voc2007-full}
OUT=${OUT:-runs}
# name: backbone, image size, the --finetune cut for its last three blocks (README, Train: blocks per Lite)
declare -A SETTINGS=(
  [lite2-224]="efficientnet_lite2 224 top:18"
  [lite0-448]="efficientnet_lite0 448 top:13"
  [lite1-448]="efficientnet_lite1 448 top:18"
)
read -ra PAIRS <<< "${PAIRS:-lite2-224 lite0-448}"
for name in "${PAIRS[@]}"; do  # refused before any run
  [[ -v "SETTINGS[$name]" ]] || { echo "PAIRS: no setting named $name (there are: ${!SETTINGS[*]})" >&2; exit 2; }
done
train() {  # name
  local backbone size cut
  read -r backbone size cut <<< "${SETTINGS[$1]}"
  python -m train fit --config-dir train/configs/voc2007-cpu-v2 --variant baseline --data-root "$DATA" \
    --output-dir "$OUT" --group "backbones-$1" --backbone "$backbone" --image-size "$size" --finetune "$cut" \
    --seed 0 --seeds 1 --diagnostics false --resume
}
workers=${WORKERS:-1}
[[ $workers =~ ^[1-9][0-9]*$ ]] || { echo "WORKERS=$workers: must be a whole number of 1 or more" >&2; exit 2; }
if (( workers > 1 )); then
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null' EXIT INT TERM
  for ((k = 0; k < ${#PAIRS[@]}; k++)); do
    while (( $(jobs -rp | wc -l) >= workers )); do sleep 5; done
    (export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; train "${PAIRS[k]}") & pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  trap - EXIT INT TERM
  (( failed == 0 )) || { echo "a run failed: see above; run it again to resume" >&2; exit 1; }
else
  for name in "${PAIRS[@]}"; do train "$name"; done
fi
python - "$OUT" "${PAIRS[@]}" <<'PY'
import json, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
rows = [("Lite0 at 224 (previous recipe)", out / "voc2007-cpu" / "baseline"),
        *((name, out / f"backbones-{name}" / "baseline") for name in names),
        ("Lite2 at 448 (shipped)", out / "voc2007-cpu-v2" / "baseline")]
print("| baseline, seed 0 | selection mAP | val mAP | frozen (stage 1) val mAP | minutes |\n|---|---:|---:|---:|---:|")
for label, run in rows:
    if not (run / "eval.json").is_file():
        print(f"| {label} | not trained here ({run} has no eval.json) | | | |")
        continue
    r = json.loads((run / "eval.json").read_text())
    stage1 = f"{100 * r['stage1']['metrics']['map']:.2f}" if r.get("stage1") else "-"
    print(f"| {label} | {100 * r['selection_map']:.2f} | {100 * r['metrics']['map']:.2f} | {stage1} | "
          f"{r['train_seconds'] / 60:.1f} |")
PY
