#!/usr/bin/env bash
# GeoGR's Foursquare NYC table in one lent-device session (retrieval issue: 3 seeds, the ablations, SASRec),
# every run a process on one card (geogr.md §10.2, §10.4):
#   for each seed in $SEEDS: benchmarks/retrieval_city.py with $CONFIG and the variants $VARIANTS (GeoGR,
#   TIGER-style, -CPT, -co-visit), and the SASRec-style baseline (`rankstack bench retrieval`, which also scores
#   popularity and geo-nearest popular).
# The data come converted on the machine from a carried copy of ../shared/data (the device call carries only the
# repository): once, here,
#     echo /.gpu-data/ >> .git/info/exclude; mkdir -p .gpu-data && cp -r ../shared/data/foursquare-nyc .gpu-data/
# and carry `.gpu-data` (and `.whl`, see benchmarks/gpu_session.sh). Every run stops at DEADLINE_S after the start;
# results come back in at most 8 files under $OUT.
#
#     OUT=runs/bench/gpu-retrieval bash benchmarks/gpu_retrieval.sh
#
# A CPU dry run of the plumbing: SEEDS=0 VARIANTS="geogr tiger" SET="--set lm.sft.max_examples=300 \
#   --set lm.decode.max_eval_samples=40 --set lm.cpt.records_per_template=40 --set lm.model.hidden_size=64 \
#   --set lm.model.num_heads=2 --set lm.model.intermediate_size=128 --set lm.model.num_layers=1" \
#   SASREC_SET="--set sasrec.max_epochs=1" bash benchmarks/gpu_retrieval.sh
# It has not run on a GPU yet: its wall time per run is still to be measured. With time to spare, a second call
# with SEEDS=0 VARIANTS="geogr tiger" SET="--set lm.prompt.profile_pois=20" OUT=runs/bench/gpu-retrieval-profile
# asks whether a 13 M LM copies revisits from a [user] profile, which the 2-layer CPU LM does not (BENCHMARKS.md).
#
# DATA=city-small runs the small synthetic city instead (generated on the machine, ~15 s; nothing to carry) with
# configs/retrieval/city_small_gpu.yaml: does a 13 M LM turn around the CPU LM's small-city result, where text-only
# SIDs beat GeoGR's? For example, DATA=city-small SEEDS="0 1 2" VARIANTS="geogr tiger no_covisit".
set -u
DATA=${DATA:-nyc}
OUT=${OUT:-runs/bench/gpu-retrieval}
WORK=${WORK:-/tmp/gpu-retrieval}
DEADLINE_S=${DEADLINE_S:-540}
if [ "$DATA" = city-small ]; then CONFIG=${CONFIG:-configs/retrieval/city_small_gpu.yaml}
else CONFIG=${CONFIG:-configs/retrieval/nyc_gpu.yaml}; fi
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"geogr tiger no_cpt no_covisit"}
SHARED=${SHARED:-.gpu-data}
SET=${SET:-}
SASREC_SET=${SASREC_SET:-}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
started=$SECONDS
left() { echo $((DEADLINE_S - (SECONDS - started))); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/nvidia_smi.txt" 2>&1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$WORK/gpu_util.csv" 2>&1 &
util=$!
if [ "$DATA" = city-small ]; then
  data=$WORK/world-small/next_poi
  $PY -m rankstack world generate --size small --seed 0 --out "$WORK/world-small" > "$WORK/convert.log" 2>&1 \
    || { cat "$WORK/convert.log"; exit 1; }
else
  data=$WORK/nyc-next-poi
  $PY -m rankstack data convert --format foursquare-nyc --input "$SHARED/foursquare-nyc" --out "$data" \
    > "$WORK/convert.log" 2>&1 || { cat "$WORK/convert.log"; exit 1; }
fi

nvariants=$(echo $VARIANTS | wc -w)
for seed in $SEEDS; do
  timeout "$(left)" $PY benchmarks/retrieval_city.py --config "$CONFIG" --data "$data" --out "$WORK/$DATA-seed$seed" \
    --seed "$seed" --variants $VARIANTS --jobs "$nvariants" $SET --results "$WORK/retrieval_${DATA}_gpu.jsonl" \
    > "$WORK/geogr_seed$seed.log" 2>&1 &
  timeout "$(left)" $PY -m rankstack bench retrieval --config "$CONFIG" --out "$WORK/sasrec-seed$seed" \
    --set "data=$data" --set sasrec.enabled=true --set "sasrec.seed=$seed" $SASREC_SET \
    > "$WORK/sasrec_seed$seed.log" 2>&1 &
done
for job in $(jobs -p); do [ "$job" = "$util" ] || wait "$job"; done
pkill -9 -f multiprocessing.spawn; sleep 1  # a stopped driver's pool workers would train on past the deadline
kill "$util" 2>/dev/null
echo "done at $((SECONDS - started)) s"
cat "$WORK/retrieval_${DATA}_gpu.jsonl" 2>/dev/null | cut -c1-300

cd "$WORK" && tar czf "$OUT/retrieval_gpu_session.tar.gz" nvidia_smi.txt gpu_util.csv *.log \
  $(ls retrieval_${DATA}_gpu.jsonl 2>/dev/null) $(find . -name metrics.json -o -name stage.json -o -name "*.jsonl" \
  2>/dev/null | grep -v -e "^./nyc-next-poi" -e "^./world-small")
ls -la "$OUT"
