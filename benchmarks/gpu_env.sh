# Sourced by the relevance device scripts (gpu_relevance.sh, gpu_dpo_probe.sh) after they set $WORK: the environment
# their processes share, the deadline clock `left` (seconds to $DEADLINE_S), and the card's name and the commit in
# $WORK/nvidia_smi.txt.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PY=${PYTHON:-python3}
started=$SECONDS
left() { echo $((DEADLINE_S - (SECONDS - started))); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/nvidia_smi.txt" 2>&1
git rev-parse HEAD >> "$WORK/nvidia_smi.txt" 2>&1
