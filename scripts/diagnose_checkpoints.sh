#!/usr/bin/env bash
# Recompute "what each method sees" (mlc.diagnostics: pointing game and box energy of each method's
# own map and of Grad-CAM, flip / scale consistency, the graph ablation, deletion / insertion and the
# sanity checks) for the shipped checkpoints on the VOC 2007 val split, in place and without
# retraining (the weights are never written), then rewrite their model cards from the new eval.json.
#   scripts/diagnose_checkpoints.sh [VOC_ROOT] [CHECKPOINTS]        (nice it; ~1 h on 2 CPU cores at 224 px)
# VARIANTS="..." diagnoses only those (e.g. two invocations with OMP_NUM_THREADS=1 and half the
# variants each share 2 cores); a variant whose eval.json has its diagnostics is skipped (resumable).
# GROUP=runs/<group> (the run group the checkpoints were shipped from): each diagnosed checkpoint's
# diagnostics also go into its run's eval.json (only where the weights are the same file), and once
# every checkpoint has them, `train report` is redone and copied to CKPT/REPORT.md and report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/voc2007}
CKPT=${2:-checkpoints}
GROUP=${GROUP:-}
[[ -z $GROUP || -d $GROUP ]] || { echo "GROUP: no run group folder $GROUP" >&2; exit 2; }
ALL=$(python -c "from mlc.models import list_models; print(' '.join(list_models()))")
read -ra CHOSEN <<< "${VARIANTS:-$ALL}"
for variant in "${CHOSEN[@]}"; do
  [[ " $ALL " == *" $variant "* ]] || { echo "VARIANTS: no variant named $variant (there are: $ALL)" >&2; exit 2; }
done
PRESENT=()  # the chosen variants that have a checkpoint: their cards are rewritten
for variant in "${CHOSEN[@]}"; do
  [ -d "$CKPT/$variant" ] || { echo "$variant: no checkpoint in $CKPT, skipped"; continue; }
  PRESENT+=("$variant")
  if python -c "import json,sys; sys.exit(0 if json.load(open('$CKPT/$variant/eval.json')).get('diagnostics', {}).get('faithfulness') else 1)"; then
    echo "$variant: done already"; continue   # resumable: a finished variant is skipped
  fi
  md5=$(md5sum "$CKPT/$variant/model.safetensors")
  python -m train evaluate --model "$CKPT/$variant" --dataset voc2007 --data-root "$DATA" --split val \
    --num-workers 2 --output "$CKPT/$variant/eval.json" --merge
  echo "$md5" | md5sum -c --quiet   # the weights are untouched
done
python - "$CKPT" "$GROUP" "${PRESENT[@]}" <<'PY'
import filecmp, json, shutil, sys
from pathlib import Path

import yaml

from mlc.hub import model_card

ckpt, group = Path(sys.argv[1]), Path(sys.argv[2]) if sys.argv[2] else None
# only this invocation's variants: another one (VARIANTS halves) may be writing its own eval.json now
for folder in sorted(ckpt / name for name in sys.argv[3:]):
    config = json.loads((folder / "config.json").read_text())
    result = json.loads((folder / "eval.json").read_text())
    train = yaml.safe_load((folder / "training_config.yaml").read_text()) if (folder / "training_config.yaml").is_file() else None
    (folder / "README.md").write_text(model_card(config, result, train, result.get("split_info")))
    print(f"{folder.name}: card rewritten")
    run = group / folder.name if group else None
    if run is None:
        continue
    if not (run / "model" / "model.safetensors").is_file() or not filecmp.cmp(
            run / "model" / "model.safetensors", folder / "model.safetensors", shallow=False):
        print(f"{folder.name}: {run} holds other weights, its eval.json is left alone")
        continue
    run_result = json.loads((run / "eval.json").read_text())
    run_result["diagnostics"] = result["diagnostics"]
    (run / "eval.json").write_text(json.dumps(run_result, indent=1))
    print(f"{folder.name}: diagnostics copied into {run}/eval.json")
folders = [f for f in sorted(ckpt.iterdir()) if (f / "eval.json").is_file()]
if group and all(json.loads((f / "eval.json").read_text()).get("diagnostics", {}).get("faithfulness") for f in folders):
    from train.report import write_report

    write_report(group)
    shutil.copy(group / "report.md", ckpt / "REPORT.md")
    shutil.copy(group / "report.json", ckpt / "report.json")
    print(f"every checkpoint diagnosed: {ckpt}/REPORT.md and report.json redone from {group}")
PY
