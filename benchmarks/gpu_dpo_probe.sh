#!/usr/bin/env bash
# Why does DPO lower the 94 M ladder's macro-F1 (BENCHMARKS.md "The TaoSR1 ladder at 94 M parameters")? Per seed in
# $SEEDS, one label-first SFT run of the ladder's settings, then DPO arms from it side by side on one card, each
# benched on the ladder's 256 test pairs (benchmarks/relevance_cpu.py --sft-run); with CHAIN=full every arm goes on
# to the ladder's GRPO (20 steps at lr 3e-6) and is benched again, so each seed gives SFT → DPO → GRPO per arm:
#   base       the ladder's DPO: lr 1e-5, 128 prompts, plain sigmoid DPO (§3.2)
#   lr1e-6     a tenth of the rate (§3.2's rate for a pretrained model)
#   nll1       + the chosen answers' NLL at weight 1 (training.nll_weight; RPO)
#   p<N>[b<β>][s<A>][nll<W>]  N prompts instead of 128, β instead of 0.1, chosen answers right in at least a share
#              A of their verifier steps (training.chosen_min_step_accuracy; else the gold rationale), NLL at weight
#              W: p512 and p512nll1 (the probe), p1024 and p1024nll1 (the 3-seed rerun), p1024nll3 and p1024nll10
#              (the NLL anchor's dose), p1024s1 and p1024s1nll3 (chosen answers right in every step: not yet run)
# Every process stops at DEADLINE_S after this script starts; each arm writes its JSON (DPO sampling statistics,
# logged rewards and the benches) after every stage, and the end packs the JSONs and every log's tail into
# $OUT/dpo_probe.tar.gz (the device tool returns at most 8 files).
#
#     OUT=runs/bench/gpu-dpo bash benchmarks/gpu_dpo_probe.sh                     # the probe: seed 0, 5 arms, DPO only
#     OUT=runs/bench/gpu-dpo SEEDS="0 1 2" CHAIN=full ARMS="p1024 p1024nll1" bash benchmarks/gpu_dpo_probe.sh
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
SEEDS=${SEEDS:-0}
CHAIN=${CHAIN:-dpo}
mkdir -p "$OUT" "$WORK/results"
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$WORK/gpu_util.csv" 2>&1 &
util=$!
# The world once, before the processes that read it start.
$PY -c "from rankstack.world import WorldConfig, generate
generate(WorldConfig.preset('$WORLD'), seed=0, out='$WORK/world-$WORLD-0', overwrite=True)" || exit 1
common="--model $MODEL --world $WORLD --sft-steps ${SFT_STEPS:-700} --sft-batch-size 32 --sft-lr 3e-4
  --grpo-lr 3e-6 --grpo-steps 20 --grpo-refresh-steps 20
  --gen-batch-size ${GEN_BATCH:-128} --eval-pairs ${EVAL_PAIRS:-256} --skip-cross-encoder --variants label_first
  --out $WORK"
tag() { [ "$SEEDS" = 0 ] && echo "$1" || echo "seed$2_$1"; }  # the probe's file names when it is seed 0 alone
seed_arms() {  # one seed: its SFT run, then its arms side by side
  local seed=$1 arm extra
  timeout "$(left)" $PY benchmarks/relevance_cpu.py $common --seed "$seed" --chain sft \
    --result "$WORK/results/probe_$(tag sft "$seed").json" > "$WORK/sft_seed$seed.log" 2>&1
  echo "SFT seed $seed at $((SECONDS - started)) s"
  local sft
  sft=$(ls -d "$WORK"/relevance-cpu*-"$seed"/sft-label_first) || return
  for arm in $ARMS; do
    case $arm in
      base) extra="--dpo-lr 1e-5" ;;
      lr1e-6) extra="--dpo-lr 1e-6" ;;
      nll1) extra="--dpo-lr 1e-5 --dpo-set training.nll_weight=1.0" ;;
      p[0-9]*)  # p<prompts>[b<beta>][s<min step accuracy>][nll<weight>], e.g. p1024nll3, p1024s1nll1
        [[ $arm =~ ^p([0-9]+)(b([0-9.]+))?(s([0-9.]+))?(nll([0-9.]+))?$ ]] || { echo "unknown arm $arm"; continue; }
        extra="--dpo-lr 1e-5 --dpo-prompts ${BASH_REMATCH[1]}"
        [ -n "${BASH_REMATCH[3]}" ] && extra="$extra --dpo-set training.beta=${BASH_REMATCH[3]}"
        [ -n "${BASH_REMATCH[5]}" ] && extra="$extra --dpo-set training.chosen_min_step_accuracy=${BASH_REMATCH[5]}"
        [ -n "${BASH_REMATCH[7]}" ] && extra="$extra --dpo-set training.nll_weight=${BASH_REMATCH[7]}" ;;
      *) echo "unknown arm $arm"; continue ;;
    esac
    timeout "$(left)" $PY benchmarks/relevance_cpu.py $common --seed "$seed" --chain "$CHAIN" --sft-run "$sft" \
      --name="-$arm" $extra --result "$WORK/results/probe_$(tag "$arm" "$seed").json" > "$WORK/dpo_${arm}_seed$seed.log" 2>&1 &
  done
  wait
}
for seed in $SEEDS; do seed_arms "$seed" & done
for job in $(jobs -p); do [ "$job" = "$util" ] || wait "$job"; done
kill $util 2>/dev/null
echo "done at $((SECONDS - started)) s"
for log in "$WORK"/*.log; do tail -c 20000 "$log" > "$log.tail"; done
tar czf "$OUT/dpo_probe.tar.gz" -C "$WORK" nvidia_smi.txt gpu_util.csv $(cd "$WORK" && ls results/*.json *.log.tail)
ls -la "$OUT"
