#!/usr/bin/env bash
# The relevance checks of one lent-device session, in one command, every process at once on one card
# (BENCHMARKS.md "The TaoSR1 ladder at 94 M parameters" and "Relevance RL at 94 M parameters"):
#   1. the TaoSR1 ladder of the ~94M Llama on the small city for seeds $SEEDS: one process runs the label-first
#      chain SFT → DPO → GRPO, another the label-only and think-first SFT variants (benchmarks/relevance_cpu.py);
#   2. GRPO vs SRPO vs AGRL vs SRPO+AGRL for RL seeds $RL_SEEDS, one process per arm and seed
#      (benchmarks/relevance_rl.py), evaluated on the whole test split: RL seed s starts from ladder seed s's DPO
#      run when $SEEDS has s (the per-seed SFT + DPO start), else from the first ladder seed's, once it
#      exists.
# A 94M model leaves most of an H100/H200 idle while it generates, so the processes share the card. Every process
# stops at DEADLINE_S after the start of this script, whatever it finished is kept, and the results are packed into
# at most 8 files under $OUT (the device tool returns no more).
#
#     OUT=runs/bench/gpu-relevance bash benchmarks/gpu_relevance.sh
#
# On the workplace's device machines, carry `.whl` (see benchmarks/gpu_session.sh) and start with
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# A CPU dry run of the plumbing (minutes): MODEL=tiny WORLD=tiny SFT_STEPS=4 RL_STEPS=2 EVAL_PAIRS=16 ... bash ...
#
# Sizing, from its first run (H200, 2026-11-26, BENCHMARKS.md): two seeds' ladders (4 processes) took 7.5 min with
# the RL arms beside them; 16 processes at generation batch 128 ran out of the card's memory, and under 8 processes
# an RL step took about 3 s (GRPO), 6 s (SRPO) and 6-16 s (AGRL, SRPO+AGRL), so the ladder of 3 seeds and the 12 RL
# runs do not fit one 10-minute call together: give a session either the ladder (RL_SEEDS="") or the RL arms
# (SEEDS=0 CHAIN=dpo VARIANTS="", fewer RL_STEPS or RL_SEEDS). Its third run (H200, 2026-11-26: 3 seeds' ladders and
# the 4 arms of one RL seed at 15 steps, 503 s) peaked at 112.5 GiB of the card's memory, more than an H100 has;
# there the 4 arms at lr 2e-5 (then the default) lowered macro-F1, the ladder's GRPO at 3e-6 had raised it, so the
# arms now default to 3e-6. DPO lowers macro-F1 on the ladder's 128 prompts and on 1,024, with and without
# DPO_SET="--dpo-set training.nll_weight=1.0" (BENCHMARKS.md; that ladder ran through gpu_dpo_probe.sh, which trains
# one SFT run per seed for both DPO arms: 428 s for 3 seeds × 2 arms, peak 90 GiB). SFT_SET="--sft-set
# data.hint_share=0.5" teaches the SFT model to read replay's hints (without it every hinted answer of the 94 M model
# failed the parser, BENCHMARKS.md "A fifth device session"; benchmarks/relevance_hints.py measures it, and HINTS=1
# runs it on each RL seed's start beside the arms). Its sixth run (H200, 2026-11-27: 3 seeds' hinted ladders with
# CHAIN=dpo, then all 12 arms at once) took 323 s for the ladders; of the arms, only GRPO (201-207 s) and one AGRL
# run finished by the 570 s deadline, and the card's memory peaked at 142.6 GiB, all of it. Give the ladders and the
# arms a call each (the first with RL_SEEDS="", the second with LADDER=0 and the same SEEDS and WORK: its arms start
# from the DPO runs the first call left in $WORK, which a warm machine keeps), and with hint_share 0.5 give SFT
# 1,050 steps (SFT_STEPS=1050): at 700 the hinted SFT started at macro-F1 0.42 against 0.79 without hints
# (BENCHMARKS.md "A sixth device session").
set -u
OUT=${OUT:-runs/bench/gpu-relevance}
WORK=${WORK:-/tmp/gpu-relevance}
DEADLINE_S=${DEADLINE_S:-540}
SEEDS=${SEEDS:-"1 2"}
RL_SEEDS=${RL_SEEDS-"0 1 2"}
VARIANTS=${VARIANTS-"label_only think_first"}
ARMS=${ARMS:-"grpo srpo agrl srpo_agrl"}
MODEL=${MODEL:-100m}
WORLD=${WORLD:-small}
EVAL_PAIRS=${EVAL_PAIRS:-256}       # the ladder's bench: the first test pairs, as seed 0's row
RL_EVAL_PAIRS=${RL_EVAL_PAIRS:-1368}  # the RL arms: the whole test split of the small city
RL_STEPS=${RL_STEPS:-30}
RL_LR=${RL_LR:-3e-6}
GEN_BATCH=${GEN_BATCH:-128}
RL_GEN_BATCH=${RL_GEN_BATCH:-64}    # 128 took 10-20 GiB per RL process: 16 processes ran out of an H200's 139.8 GiB
MAX_JOBS=${MAX_JOBS:-12}            # processes at once; an RL arm waits for a free slot
LADDER=${LADDER:-1}                 # 0: train no ladder; the arms start from the DPO runs already in $WORK
mkdir -p "$OUT" "$WORK/rl"
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$WORK/gpu_util.csv" 2>&1 &
util=$!
# The world once, before the processes that read it start (a LADDER=0 call reuses the first call's).
if [ "$LADDER" = 1 ] || [ ! -d "$WORK/world-$WORLD-0" ]; then
  $PY -c "from rankstack.world import WorldConfig, generate
generate(WorldConfig.preset('$WORLD'), seed=0, out='$WORK/world-$WORLD-0', overwrite=True)" || exit 1
  echo "world at $((SECONDS - started)) s"
fi

ladder="--model $MODEL --world $WORLD --sft-steps ${SFT_STEPS:-700} --sft-batch-size 32 --sft-lr 3e-4 --dpo-lr 1e-5
  --grpo-lr 3e-6 --grpo-steps 20 --grpo-refresh-steps 20 --dpo-prompts ${DPO_PROMPTS:-128} ${DPO_SET:-} ${SFT_SET:-}
  --gen-batch-size $GEN_BATCH
  --eval-pairs $EVAL_PAIRS --skip-cross-encoder --out $WORK"
for seed in $SEEDS; do
  [ "$LADDER" = 1 ] || break
  timeout "$(left)" $PY benchmarks/relevance_cpu.py $ladder --seed "$seed" --chain "${CHAIN:-full}" \
    --variants label_first --result "$OUT/ladder_${MODEL}_${WORLD}_seed$seed.json" > "$WORK/ladder_seed$seed.log" 2>&1 &
  [ -n "$VARIANTS" ] && timeout "$(left)" $PY benchmarks/relevance_cpu.py $ladder --seed "$seed" --chain none \
    --variants $VARIANTS --result "$OUT/variants_${MODEL}_${WORLD}_seed$seed.json" \
    > "$WORK/variants_seed$seed.log" 2>&1 &
done

rl="--steps $RL_STEPS --train-pairs 256 --lr $RL_LR --eval-split test --eval-pairs $RL_EVAL_PAIRS
  --set rollout.num_generations=8 --set rollout.prompts_per_step=8 --set rollout.generation_batch_size=$RL_GEN_BATCH
  --set eval.batch_size=$RL_GEN_BATCH"
rm_rl="--set srpo.step_rm.learning_rate=1e-4 --set srpo.step_rm.max_steps=60"
start_seed() {  # the ladder seed whose DPO run RL seed $1 starts from: its own when the ladder trains it
  case " $SEEDS " in *" $1 "*) echo "$1" ;; *) echo "${SEEDS%% *}" ;; esac
}
for seed in $RL_SEEDS; do
  start=$(start_seed "$seed")
  run="relevance-cpu-$MODEL-$WORLD-$start"
  [ "$MODEL-$WORLD" = tiny-tiny ] && run="relevance-cpu-$start"  # relevance_cpu.py's run folder
  init="$WORK/$run/dpo"
  until [ "$LADDER" = 0 ] || grep -q '"bench_dpo"' "$OUT/ladder_${MODEL}_${WORLD}_seed$start.json" 2>/dev/null \
      || [ "$(left)" -le 0 ]; do
    sleep 3
  done
  [ -d "$init" ] && [ "$(left)" -gt 0 ] || continue
  echo "RL seed $seed from $init at $((SECONDS - started)) s"
  for arm in $ARMS; do
    while [ "$(jobs -rp | wc -l)" -gt "$MAX_JOBS" ] && [ "$(left)" -gt 0 ]; do sleep 2; done  # + the util logger
    extra=""
    case $arm in srpo*) extra=$rm_rl ;; esac
    timeout "$(left)" $PY benchmarks/relevance_rl.py --init "$init" $rl $extra --seed "$seed" --arms "$arm" \
      --out "$WORK/rl" --result "$WORK/rl/rl_${arm}_seed$seed.json" > "$WORK/rl/rl_${arm}_seed$seed.log" 2>&1 &
  done
  # HINTS=1: can the start read replay's hints (format failures, label accuracy, usable share per hint level)?
  [ "${HINTS:-0}" = 1 ] && timeout "$(left)" $PY benchmarks/relevance_hints.py --init "$init" --pairs 64 --samples 4 \
    --batch-size $RL_GEN_BATCH --result "$WORK/rl/hints_seed$seed.json" > "$WORK/rl/hints_seed$seed.log" 2>&1 &
done
for job in $(jobs -p); do [ "$job" = "$util" ] || wait "$job"; done
kill $util 2>/dev/null
echo "done at $((SECONDS - started)) s"
# Pack: the RL rows and their per-step logs, every log's tail, and the GPU's name.
for log in $(ls "$WORK"/*.log "$WORK"/rl/*.log 2>/dev/null); do tail -c 20000 "$log" > "$log.tail"; done
tar czf "$OUT/relevance_gpu_session.tar.gz" -C "$WORK" nvidia_smi.txt gpu_util.csv \
  $(cd "$WORK" && ls *.log.tail rl/*.json rl/*.log.tail rl/*/train_log.jsonl rl/*/metrics.json 2>/dev/null)
ls -la "$OUT"
