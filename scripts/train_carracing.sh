#!/usr/bin/env bash
# The CarRacing pipeline under a wall-clock budget: collect brownian episodes, train V and M, train C
# in the dream, evaluate C in the real env. Meant for a GPU machine with many cores; it runs anywhere.
#
#   BUDGET=540 WORKERS=16 bash scripts/train_carracing.sh OUT_DIR
#
# Every stage resumes (collect keeps finished shards; the trainers take --resume), so running the same
# command again continues where a stage was cut. Each stage is stopped by `timeout` (SIGTERM: the
# trainers save a resumable checkpoint first) when its share of BUDGET is spent, and the next one goes
# on with what was saved. Settings (environment variables, defaults in brackets):
#   BUDGET [540]          seconds for the whole run
#   WORKERS [nproc]       collection and evaluation processes
#   EPISODES [0]          episodes to collect; 0: as many as COLLECT_S seconds allow at the measured
#                         single-env rate (a multiple of 2 * WORKERS)
#   COLLECT_S [120]       seconds planned for collection when EPISODES=0
#   MAX_STEPS [0]         cap on episodes' length in collection, the dream search and evaluation
#                         (0: the env's own 1000 steps; a cap is for quick trials)
#   VAE_EPOCHS [10] RNN_EPOCHS [40] GENERATIONS [400]   upper bounds; the budget usually stops them first
#   WHERE [dream]         where CMA-ES scores candidates: dream (batched on DEVICE) or real (the paper's
#                         route for CarRacing: WORKERS processes run the real env on V and M's features)
#   POPSIZE [64] ROLLOUTS [16] TEMPERATURE [1.15]       CMA-ES settings (1.15: the paper's dream tau)
#   EVAL_EPISODES [0]     real-env evaluation episodes (0: WORKERS)
#   DEVICE [auto]         torch device for V, M and the dream
#   PYTHON [python3]      the interpreter that has wm-agent's dependencies
#   WM ["$PYTHON -m wm_agent.cli"]  how to call wm-agent
set -uo pipefail

out=${1:?usage: train_carracing.sh OUT_DIR}
mkdir -p "$out"
BUDGET=${BUDGET:-540}
WORKERS=${WORKERS:-$(nproc)}
EPISODES=${EPISODES:-0}
COLLECT_S=${COLLECT_S:-120}
MAX_STEPS=${MAX_STEPS:-0}
VAE_EPOCHS=${VAE_EPOCHS:-10}
RNN_EPOCHS=${RNN_EPOCHS:-40}
GENERATIONS=${GENERATIONS:-400}
WHERE=${WHERE:-dream}
POPSIZE=${POPSIZE:-64}
ROLLOUTS=${ROLLOUTS:-16}
TEMPERATURE=${TEMPERATURE:-1.15}
EVAL_EPISODES=${EVAL_EPISODES:-0}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python3}
WM=${WM:-$PYTHON -m wm_agent.cli}
[ "$EVAL_EPISODES" -gt 0 ] || EVAL_EPISODES=$WORKERS
start=$SECONDS
data="$out/data"
ckpt="$out/car.pt"

say() { echo "[$((SECONDS - start)) s] $*" | tee -a "$out/stages.log"; }
left() { echo $((BUDGET - (SECONDS - start))); }
# stage NAME SHARE_OF_WHAT_IS_LEFT_IN_PERCENT RESERVE_S COMMAND...: run under a timeout of that share of the
# remaining budget, keeping RESERVE_S for the stages after it.
stage() {
  local name=$1 share=$2 reserve=$3; shift 3
  local t=$(( ($(left) - reserve) * share / 100 ))
  if [ "$t" -lt 5 ]; then say "$name: skipped, budget spent"; return 1; fi
  say "$name: up to $t s: $*"
  timeout --kill-after=60 "$t" "$@" 2>&1 | tee -a "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ]; then say "$name: stopped at its time share"
  else say "$name: exit $rc"; fi
  return "$rc"
}

if [ "$EPISODES" -eq 0 ]; then
  rate=$($WM benchmark dream --real-steps 500 --num-envs 1 --dream-steps 1 | awk '/real WM-CarRacing/ {print int($(NF-1))}')
  # A worker per core runs somewhat slower than one env alone: plan on 80% of the single-env rate.
  EPISODES=$($PYTHON -c "w=$WORKERS; n=int(w * $rate * 0.8 * $COLLECT_S / ($MAX_STEPS or 1000)); print(max(2 * w, n // (2 * w) * 2 * w))")
  say "single CarRacing env: $rate steps/s; collecting $EPISODES episodes"
fi
collect_args=(--env WM-CarRacing-v0 --episodes "$EPISODES" --episodes-per-shard 2 --workers "$WORKERS"
              --policy brownian --seed 0 --out "$data" --no-progress)
limit=(--max-steps "$MAX_STEPS")  # 0: the env's own limit, for each command that takes it
collect_args+=("${limit[@]}")
# Collection must finish (the trainers read a complete folder): it may take what is left but 40% of BUDGET.
stage collect 100 $((BUDGET * 2 / 5)) $WM collect "${collect_args[@]}" || { say "collection incomplete: run again to resume"; exit 1; }

stage train-vae 30 0 $WM train-vae --data "$data" --out "$ckpt" --epochs "$VAE_EPOCHS" --batch-size 256 \
  --device "$DEVICE" --resume --no-progress || true
stage train-rnn 40 0 $WM train-rnn --data "$data" --world-model "$ckpt" --epochs "$RNN_EPOCHS" --batch-size 64 \
  --device "$DEVICE" --resume --no-progress || true
stage train-controller 70 0 $WM train-controller --world-model "$ckpt" --in "$WHERE" --workers "$WORKERS" --popsize "$POPSIZE" \
  --rollouts "$ROLLOUTS" --generations "$GENERATIONS" --temperature "$TEMPERATURE" --device "$DEVICE" \
  "${limit[@]}" --resume --no-progress || true
stage evaluate 100 0 $WM evaluate --checkpoint "$ckpt" --episodes "$EVAL_EPISODES" --workers "$WORKERS" \
  "${limit[@]}" --no-progress || true
say "done"
