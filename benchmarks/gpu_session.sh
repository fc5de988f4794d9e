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
#
# On the workplace's lent H100/H200 machines (no package index there; their image has torch, transformers and peft
# but not TRL or datasets), carry our versions as wheels. Here, once:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#         transformers==5.24.0 trl==1.16.0 datasets==5.2.0 peft==0.21.2 tokenizers==0.23.3 dill==0.4.1 \
#         multiprocess==0.70.19 fsspec==2026.9.0
# then run, carrying `.whl`:
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#     bash benchmarks/gpu_session.sh
# The whole session took 4 min on an H200 (2026-11-26); BENCHMARKS.md "GPU" has what it measured.
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
