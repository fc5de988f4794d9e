#!/usr/bin/env bash
# The GPU checks of one lent-device session, in one command (BENCHMARKS.md "GPU"):
#   1. HeMix training throughput and MFU in bf16 for the large config (ranking issue), eager;
#   2. SFT and a few GRPO steps of a ~99M-parameter Llama built from a config on the small city (relevance issue),
#      with dev accuracy / macro-F1 before and after, so the run also says whether a larger model learns;
#   3. the HeMix measurement again under torch.compile (last: it may be cut by its time limit).
# Each step has its own time limit so that one hang does not cost the others. Results and logs go to $OUT
# (default runs/bench/gpu).
#
#     OUT=runs/bench/gpu SFT_STEPS=800 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
started=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
$PY -c "import torch, transformers, trl, datasets, peft; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, 'peft', peft.__version__)"

echo "== ranking_gpu (eager) at $((SECONDS - started)) s"
timeout "${RANKING_LIMIT_S:-180}" $PY benchmarks/ranking_gpu.py --out "$OUT/ranking_gpu.json" 2>&1 \
  | tee "$OUT/ranking_gpu.log"

echo "== relevance_gpu at $((SECONDS - started)) s"
timeout "${RELEVANCE_LIMIT_S:-330}" $PY benchmarks/relevance_gpu.py --sft-steps "${SFT_STEPS:-800}" \
  --out /tmp/relevance-gpu > "$OUT/relevance_gpu_full.log" 2>&1
tail -c 60000 "$OUT/relevance_gpu_full.log" > "$OUT/relevance_gpu.log" && rm "$OUT/relevance_gpu_full.log"
tail -n 60 "$OUT/relevance_gpu.log"
cp benchmarks/results/relevance_gpu.json "$OUT/" 2>/dev/null || echo "relevance_gpu.json was not written"

echo "== ranking_gpu (torch.compile) at $((SECONDS - started)) s"
timeout "${COMPILE_LIMIT_S:-120}" $PY benchmarks/ranking_gpu.py --compile --out "$OUT/ranking_gpu_compile.json" 2>&1 \
  | tee "$OUT/ranking_gpu_compile.log"
echo "== done at $((SECONDS - started)) s"
