#!/usr/bin/env bash
# Why does DPO lower the 94 M ladder's macro-F1 (BENCHMARKS.md "The TaoSR1 ladder at 94 M parameters")? One
# label-first SFT run of the ladder's seed-0 settings, then DPO arms from it side by side on one card, each benched
# on the ladder's 256 test pairs (benchmarks/relevance_cpu.py --sft-run):
#   base      the ladder's DPO: lr 1e-5, 128 prompts, plain sigmoid DPO (§3.2)
#   lr1e-6    a tenth of the rate (§3.2's rate for a pretrained model)
#   nll1      + the chosen answers' NLL at weight 1 (training.nll_weight; RPO)
#   p512      512 prompts instead of 128 (more pairs, more queries)
#   p512nll1  both
# Every process stops at DEADLINE_S after this script starts; each arm writes its JSON (DPO sampling statistics,
# logged rewards and the bench) to $OUT as soon as it has it.
#
#     OUT=runs/bench/gpu-dpo bash benchmarks/gpu_dpo_probe.sh
#
# On the workplace's device machines, carry `.whl` (see benchmarks/gpu_session.sh).
# A CPU dry run of the plumbing: MODEL=tiny WORLD=tiny SFT_STEPS=4 EVAL_PAIRS=16 ARMS="base nll1" bash ...
set -u
OUT=${OUT:-runs/bench/gpu-dpo}
WORK=${WORK:-/tmp/gpu-dpo}
DEADLINE_S=${DEADLINE_S:-270}
MODEL=${MODEL:-100m}
WORLD=${WORLD:-small}
ARMS=${ARMS:-"base lr1e-6 nll1 p512 p512nll1"}
mkdir -p "$OUT" "$WORK"
source benchmarks/gpu_env.sh
common="--model $MODEL --world $WORLD --sft-steps ${SFT_STEPS:-700} --sft-batch-size 32 --sft-lr 3e-4
  --gen-batch-size ${GEN_BATCH:-128} --eval-pairs ${EVAL_PAIRS:-256} --skip-cross-encoder --variants label_first
  --seed 0 --out $WORK"
timeout "$(left)" $PY benchmarks/relevance_cpu.py $common --chain sft --result "$OUT/probe_sft.json" \
  > "$WORK/sft.log" 2>&1
echo "SFT at $((SECONDS - started)) s"
sft=$(ls -d "$WORK"/relevance-cpu*-0/sft-label_first)
for arm in $ARMS; do
  case $arm in
    base) extra="--dpo-lr 1e-5" ;;
    lr1e-6) extra="--dpo-lr 1e-6" ;;
    nll1) extra="--dpo-lr 1e-5 --dpo-set training.nll_weight=1.0" ;;
    p512) extra="--dpo-lr 1e-5 --dpo-prompts 512" ;;
    p512nll1) extra="--dpo-lr 1e-5 --dpo-prompts 512 --dpo-set training.nll_weight=1.0" ;;
    *) echo "unknown arm $arm"; continue ;;
  esac
  timeout "$(left)" $PY benchmarks/relevance_cpu.py $common --chain dpo --sft-run "$sft" --name="-$arm" $extra \
    --result "$OUT/probe_$arm.json" > "$WORK/dpo_$arm.log" 2>&1 &
done
wait
echo "done at $((SECONDS - started)) s"
for log in "$WORK"/*.log; do tail -c 20000 "$log" > "$log.tail"; done
tar czf "$OUT/dpo_probe_logs.tar.gz" -C "$WORK" nvidia_smi.txt $(cd "$WORK" && ls *.log.tail)
ls -la "$OUT"
