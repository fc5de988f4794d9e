#!/usr/bin/env bash
# The ranking issue's `medium`-world tables in one lent-device session, the runs as parallel processes on one card
# (hemix.md §12.2, §12.4, §12.6; BENCHMARKS.md "Ranking"):
#   default      the world table (HeMix, DLRM, DCNv2, DIN, RankMixer-style, Transformer × seeds 0-2;
#                benchmarks/ranking_world.py) and the HeMix scaling sweep (benchmarks/ranking_scaling.py);
#   ABLATIONS=1  the ablation table instead (benchmarks/ranking_ablations.py: the issue's five ablations on the
#                base world and on the world with the matching mechanism off, seeds 0-2).
# The worlds are generated on the machine (a `medium` world is 468 MB, more than a device call carries; 150 s on
# the 2-core CPU machine), all at once. Every driver stops at DEADLINE_S after this script starts; the drivers then
# tabulate what finished (`--collect-only`) and everything comes back in at most 8 files under $OUT.
#
#     OUT=runs/bench/gpu-ranking bash benchmarks/gpu_ranking.sh
#     OUT=runs/bench/gpu-ranking ABLATIONS=1 bash benchmarks/gpu_ranking.sh
#
# Extra settings: TABLE_SET for the table's driver (per model: "--set hemix:model.args.target_match=true --set
# din:model.args.target_match=true", BENCHMARKS.md "Target-behaviour match"), HEMIX_SET for the HeMix-only drivers
# (scaling, ablations: "--set model.args.target_match=true").
# SCALING=0 leaves the scaling sweep out; MECHANISMS="transformer ..." fits `ranking_mechanisms.py` on those models'
# seed-0 table runs once training stops (MECH_S seconds, default 90). One table row alone, at the CPU table's size:
#     TABLE_SET="--models transformer --set transformer:model.args.dim=64 --set transformer:model.args.n_layers=2" \
#         SCALING=0 MECHANISMS=transformer bash benchmarks/gpu_ranking.sh
# A CPU dry run of the plumbing: SIZE=tiny RECIPE=small MAX_STEPS=3 JOBS=2 bash benchmarks/gpu_ranking.sh
# On an H200 (2026-11-27, BENCHMARKS.md "A fifth device session") the `medium` world took 247 s to generate and
# three d = 64 Transformer runs side by side 94 s each (10.7k samples/s per run); the full table has not run yet.
set -u
OUT=${OUT:-runs/bench/gpu-ranking}
WORK=${WORK:-/tmp/gpu-ranking}
DEADLINE_S=${DEADLINE_S:-540}
SIZE=${SIZE:-medium}
RECIPE=${RECIPE:-medium}
JOBS=${JOBS:-12}
SEEDS=${SEEDS:-"0 1 2"}
# The dense rate of every run: the configs' 1e-4 left DIN at 0.596 click AUC after an epoch of the small world, and
# 1e-3 (the top of hemix.md §6's grid) was the better rate for every model there (BENCHMARKS.md, small-world table).
LR_DENSE=${LR_DENSE:-1e-3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
started=$SECONDS
left() { echo $((DEADLINE_S - (SECONDS - started))); }
waitall() { for job in $(jobs -p); do [ "$job" = "$util" ] || wait "$job"; done; }  # all but the GPU logger
cap=(--set "trainer.lr_dense=$LR_DENSE")
[ -n "${MAX_STEPS:-}" ] && cap+=(--max-steps "$MAX_STEPS" --eval-max-rows 2000)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/nvidia_smi.txt" 2>&1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$WORK/gpu_util.csv" 2>&1 &
util=$!

# The worlds, in the folders the drivers read (ranking_ablations.py's `<out>/worlds/<size>-seed0[-<knob>-off]`).
worlds=("$WORK/world-$SIZE:")
ablations=(no_fixed_queries drop_realtime_events no_global mixer_attention mixer_mlp)
if [ "${ABLATIONS:-0}" = 1 ]; then
  for knob in longterm_interest realtime_intent interaction_order; do
    worlds+=("$WORK/abl/worlds/$SIZE-seed0-$knob-off:$knob")
  done
fi
for entry in "${worlds[@]}"; do
  folder=${entry%%:*} knob=${entry#*:}
  mkdir -p "$(dirname "$folder")"
  $PY -m rankstack world generate --size "$SIZE" --seed 0 --out "$folder" ${knob:+--set "$knob=0.0"} \
    > "$folder.log" 2>&1 &
done
waitall
echo "worlds at $((SECONDS - started)) s"

data="$WORK/world-$SIZE/ranking"
if [ "${ABLATIONS:-0}" = 1 ]; then
  drivers=("ranking_ablations.py --size $SIZE --recipe $RECIPE --base-world $WORK/world-$SIZE --out $WORK/abl
    --ablations ${ablations[*]} --seeds $SEEDS ${HEMIX_SET:-}")
else
  drivers=("ranking_world.py --data $data --recipe $RECIPE --out $WORK/table --seeds $SEEDS ${TABLE_SET:-}")
  [ "${SCALING:-1}" = 1 ] && drivers+=("ranking_scaling.py --data $data --config configs/ranking/hemix_world_$RECIPE.yaml --out $WORK/scaling
    --sizes ${SIZES:-64x1 128x1 128x2 256x2 256x3} ${HEMIX_SET:-}")
fi
# The table's 18 runs get most of the slots; the scaling sweep's 5 sizes the rest.
share=("$JOBS" 1)
[ "${#drivers[@]}" = 2 ] && share=($((JOBS * 3 / 4)) $((JOBS - JOBS * 3 / 4)))
for i in "${!drivers[@]}"; do
  timeout "$(left)" $PY benchmarks/${drivers[$i]} "${cap[@]}" --jobs "${share[$i]}" > "$WORK/driver$i.log" 2>&1 &
done
waitall
pkill -9 -f multiprocessing.spawn; sleep 2  # a stopped driver's pool workers would train on past the deadline
echo "runs stopped at $((SECONDS - started)) s"
for i in "${!drivers[@]}"; do  # the tables of whatever finished
  $PY benchmarks/${drivers[$i]} "${cap[@]}" --collect-only > "$WORK/table$i.log" 2>&1
  tail -n 25 "$WORK/table$i.log"
done
if [ -n "${MECHANISMS:-}" ]; then  # what the seed-0 runs read of the world's planted terms
  mech_runs=() mech_names=()
  for model in $MECHANISMS; do
    [ -f "$WORK/table/runs/$model-seed0/results.json" ] && mech_runs+=("$WORK/table/runs/$model-seed0") && mech_names+=("$model")
  done
  [ "${#mech_runs[@]}" -gt 0 ] && timeout "${MECH_S:-90}" $PY benchmarks/ranking_mechanisms.py --runs "${mech_runs[@]}" \
    --names "${mech_names[@]}" --out "$WORK/table/mechanisms.json" > "$WORK/mechanisms.log" 2>&1
  tail -n 20 "$WORK/mechanisms.log" 2>/dev/null
fi
kill "$util" 2>/dev/null

cd "$WORK" && tar czf "$OUT/ranking_gpu_session.tar.gz" nvidia_smi.txt gpu_util.csv *.log \
  $(ls -d table/ranking_world.* table/mechanisms.json scaling/ranking_scaling.* abl/ranking_ablations.* 2>/dev/null) \
  $(find . -name results.json -o -name train_log.jsonl 2>/dev/null)
ls -la "$OUT"
