#!/usr/bin/env bash
# CPU recipe v2 for the shipped models: EfficientNet-Lite2 at 448 px on full-resolution VOC 2007
# (train/configs/voc2007-cpu-v2/), all five variants, SEEDS seeds (3): stage 1 on cached frozen
# maps, stage 2 the last three blocks on four cached views per image (top:18, cache_views 4).
# It takes hours on 2 cores and a session may end first, so everything resumes: each run with
# --resume from its checkpoint.pt (a finished run, one with eval.json, is skipped), each feature
# cache from its finished chunks of 256 images (runs/<group>/feature_cache/). Run it again to go on.
# WORKERS (default: one per core) runs go at once, each on cores/WORKERS torch threads: on 2 cores two
# 1-thread workers train more per hour than one 2-thread run (a Lite2@448 forward: 126 ms on 1 thread,
# 98 ms on 2). Each run is claimed with flock on runs/<group>/.locks/, released when its process ends.
# Memory: G-CAM's stage 1 holds three views of the cached maps (about 12 GB at Lite2@448), so two G-CAM
# runs starting together exceed 24 GB (one was killed for it): on such a machine start the second worker
# (`... worker`, OMP_NUM_THREADS=1) once the first is in stage 2 (about 5 GB), or use WORKERS=1.
#   scripts/train_voc2007_cpu_v2.sh [run] [extra flags for python -m train fit]   train what is left, then the report
#   scripts/train_voc2007_cpu_v2.sh status                                      which runs are done
#   scripts/train_voc2007_cpu_v2.sh ship                                        copy the first seed into checkpoints/
# DATA (default ../shared/data/voc2007-full), SEEDS (3), OUT (runs), WORKERS and VARIANTS ("baseline ggnn ssgrl mlgcn
# gcam", the order they train in) may be set in the environment.
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")  # the workers run it again
cd "$(dirname "$0")/.."
CONFIGS=train/configs/voc2007-cpu-v2
DATA=${DATA:-../shared/data/voc2007-full}
SEEDS=${SEEDS:-3}
OUT=${OUT:-runs}
GROUP=voc2007-cpu-v2
read -ra VARIANTS <<< "${VARIANTS:-baseline ggnn ssgrl mlgcn gcam}"  # the order they train in
ACTION=${1:-run}
[[ $# -gt 0 ]] && shift

run_dir() {  # seed variant -> the run's folder (as `train all --seeds` lays them out)
  if [[ $1 == 0 ]]; then echo "$OUT/$GROUP/$2"; else echo "$OUT/$GROUP/seed$1/$2"; fi
}

status() {
  python - "$OUT/$GROUP" "$SEEDS" "${VARIANTS[@]}" <<'PY'
import fcntl, json, sys
from pathlib import Path
import torch
group, seeds, variants = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
done = 0


def claimed(seed, variant):
    """Whether a worker holds this run's lock (it is training now)."""
    lock = group / ".locks" / f"seed{seed}-{variant}.lock"
    if not lock.is_file():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


print(f"{group}: run, state, epochs, val mAP, minutes")
for seed in range(seeds):
    for variant in variants:
        run = group / variant if seed == 0 else group / f"seed{seed}" / variant
        name = f"seed {seed} {variant}"
        if (run / "eval.json").is_file():
            result = json.loads((run / "eval.json").read_text())
            done += 1
            print(f"  {name:18} done     epoch {result['selected_epoch']} selected  "
                  f"mAP {100 * result['metrics']['map']:.2f}  {result['train_seconds'] / 60:.0f} min")
        elif (run / "checkpoint.pt").is_file():
            state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
            print(f"  {name:18} partial  {state['epoch']} epoch(s) trained"
                  f"{' (training now)' if claimed(seed, variant) else ' (resumes there)'}")
        else:
            print(f"  {name:18} {'training now (no epoch yet)' if claimed(seed, variant) else 'to do'}")
cache = group / "feature_cache"
whole = sorted(cache.glob("*.pt")) if cache.is_dir() else []
chunks = [p for p in whole if ".chunk" in p.name]
print(f"{done} of {seeds * len(variants)} runs done; feature cache: {len(whole) - len(chunks)} finished tensor(s), "
      f"{len(chunks)} chunk(s) of unfinished ones ({sum(p.stat().st_size for p in whole) / 2**30:.1f} GiB)")
print("report:", "written" if (group / "report.json").is_file() else "not yet")
PY
}

case "$ACTION" in
  status) status ;;
  run)
    cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # GNU nproc obeys OMP_NUM_THREADS
    workers=${WORKERS:-$cores}
    [[ $workers =~ ^[1-9][0-9]*$ ]] || { echo "WORKERS=$workers: must be a whole number of 1 or more" >&2; exit 2; }
    threads=$(( cores / workers )); (( threads > 0 )) || threads=1
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null' EXIT INT TERM  # no orphaned workers holding runs when this ends
    for ((w = 0; w < workers; w++)); do
      OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads bash "$SELF" worker "$@" &
      pids+=($!)
    done
    failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done  # each by its pid: `wait -n` can lose a status
    trap - EXIT INT TERM
    (( failed == 0 )) || { echo "a worker failed: see above; run it again to resume" >&2; exit 1; }
    python -m train report "$OUT/$GROUP"
    status
    ;;
  worker)  # one pass over every run not done and not claimed by another worker
    mkdir -p "$OUT/$GROUP/.locks"
    for ((seed = 0; seed < SEEDS; seed++)); do
      for variant in "${VARIANTS[@]}"; do
        dir=$(run_dir "$seed" "$variant")
        [[ -f "$dir/eval.json" ]] && continue
        group=$GROUP; [[ $seed == 0 ]] || group="$GROUP/seed$seed"
        # as `train all --seeds`: one cache for the group, diagnostics for the first seed only
        (
          # claimed by another worker (still held after 5 s: `status` only peeks at a lock for an instant)
          flock -w 5 -E 75 9 || { rc=$?; (( rc == 75 )) && exit 0; echo "flock failed ($rc): is util-linux installed?" >&2; exit "$rc"; }
          [[ -f "$dir/eval.json" ]] && exit 0  # it finished while this worker waited
          echo "worker $$: seed $seed $variant (threads ${OMP_NUM_THREADS:-default})"
          python -m train fit --config-dir "$CONFIGS" --variant "$variant" --data-root "$DATA" --output-dir "$OUT" \
            --seed "$seed" --seeds 1 --group "$group" --cache-dir "$OUT/$GROUP/feature_cache" \
            --diagnostics "$([[ $seed == 0 ]] && echo true || echo false)" --resume "$@"
        ) 9>"$OUT/$GROUP/.locks/seed$seed-$variant.lock"
      done
    done
    ;;
  ship)
    python -m train push "$OUT/$GROUP" --dry-run
    rm -rf checkpoints/*/
    cp -r "$OUT/$GROUP"/hub_upload/*/ checkpoints/
    cp "$OUT/$GROUP/report.md" checkpoints/REPORT.md
    cp "$OUT/$GROUP/report.json" checkpoints/report.json
    du -sh checkpoints
    ;;
  *) echo "usage: $0 [run|status|ship|worker] [extra flags for python -m train fit]" >&2; exit 2 ;;
esac
