#!/usr/bin/env bash
# The CarRacing pipeline under a wall-clock budget: collect brownian episodes, train V and M, train C
# (in the dream, or in the real env), evaluate C in the real env. Meant for a GPU machine with many
# cores; it runs anywhere.
#
#   BUDGET=540 WORKERS=16 bash scripts/train_carracing.sh OUT_DIR
#
# Each stage gets a share of what is left of BUDGET and is stopped by `timeout` when it is spent (SIGTERM:
# a trainer saves a resumable checkpoint first); the next stage goes on with what was saved. A stage that
# fails, or finds no time left, stops the script with a non-zero exit. Ctrl-C (or SIGTERM to the script)
# lets the running stage save, then stops. Running the same command again resumes: collection keeps
# finished shards, and a trainer continues, but a stage that a later one already built on is not run
# again (training V further would make M and C stale and throw their work away): for more V epochs
# after M trained, use a new OUT_DIR. Settings (environment variables, defaults in brackets):
#   BUDGET [540]          seconds for the whole run
#   WORKERS [nproc]       collection and evaluation processes (and real-env search workers)
#   EPISODES [0]          episodes to collect; 0: as many as COLLECT_S seconds allow at the measured
#                         single-env rate (a multiple of 2 * WORKERS), kept in OUT_DIR/episodes for reruns
#   COLLECT_S [120]       seconds planned for collection when EPISODES=0
#   MAX_STEPS [0]         cap on episodes' length in collection, the search and evaluation
#                         (0: the env's own 1000 steps; a cap is for quick trials)
#   VAE_EPOCHS [10] RNN_EPOCHS [40] GENERATIONS [400]   upper bounds; the budget usually stops them first
#   WHERE [dream]         where CMA-ES scores candidates: dream (batched on DEVICE) or real (the paper's
#                         route for CarRacing: WORKERS processes run the real env on V and M's features).
#                         Only whole generations are saved: in the real env one is POPSIZE x ROLLOUTS
#                         episodes of up to 1000 steps over WORKERS processes at ~60-140 steps/s each,
#                         so keep it well inside the stage's share
#   ACTION_REPEAT [1]     frames each decision is held for (WM-CarRacing-v0's action_repeat: only the last is
#                         drawn, so a decision costs several times less; episodes still last 1000 frames)
#   STOP_AFTER_NEGATIVE [0]  WHERE=real only: end a TRAINING episode after this many decisions in a row with a
#                         negative reward (0: never); evaluation always runs whole episodes
#   POPSIZE [64; real: 2 * WORKERS] ROLLOUTS [16; real: 1] TEMPERATURE [1.15]   CMA-ES settings
#                         (1.15: the paper's dream temperature for CarRacing)
#   EVAL_EPISODES [0]     real-env evaluation episodes (0: WORKERS)
#   DEVICE [auto]         torch device for V, M and the dream
#   PYTHON [python3]      the interpreter that has wm-agent's dependencies
#   WM ["$PYTHON -m wm_agent.cli"]  how to call wm-agent (split on spaces)
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
ACTION_REPEAT=${ACTION_REPEAT:-1}
STOP_AFTER_NEGATIVE=${STOP_AFTER_NEGATIVE:-0}
if [ "$WHERE" = real ]; then POPSIZE=${POPSIZE:-$((2 * WORKERS))}; ROLLOUTS=${ROLLOUTS:-1}; fi
POPSIZE=${POPSIZE:-64}
ROLLOUTS=${ROLLOUTS:-16}
TEMPERATURE=${TEMPERATURE:-1.15}
EVAL_EPISODES=${EVAL_EPISODES:-0}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python3}
if [ -n "${WM:-}" ]; then read -ra wm <<< "$WM"; else wm=("$PYTHON" -m wm_agent.cli); fi
[ "$EVAL_EPISODES" -gt 0 ] || EVAL_EPISODES=$WORKERS
start=$SECONDS
data="$out/data"
ckpt="$out/car.pt"

say() { echo "[$((SECONDS - start)) s] $*" | tee -a "$out/stages.log"; }
left() { echo $((BUDGET - (SECONDS - start))); }
running=""
stop_running_stage() {
  # The stage runs in timeout's own process group, which a terminal's Ctrl-C does not reach: pass the
  # interrupt on once (a second one would make a trainer quit without saving) and let it save.
  trap '' INT TERM
  if [ -n "$running" ]; then kill -INT "$running" 2>/dev/null; wait "$running" 2>/dev/null; fi
  say "interrupted: run the same command again to resume"
  exit 130
}
trap stop_running_stage INT TERM
# stage NAME SHARE_OF_WHAT_IS_LEFT_IN_PERCENT RESERVE_S COMMAND...: run under a timeout of that share of the
# remaining budget, keeping RESERVE_S for the stages after it; stop the script unless it ended or was timed out.
stage() {
  local name=$1 share=$2 reserve=$3; shift 3
  local t=$(( ($(left) - reserve) * share / 100 ))
  if [ "$t" -lt 15 ]; then
    say "$name: no time left in BUDGET; run again with a larger BUDGET to resume"; exit 1
  fi
  say "$name: up to $t s: $*"
  # tee ignores the interrupt, so the stage's last words (what it saved) still reach the log.
  timeout --kill-after=20 "$t" "$@" > >(trap '' INT TERM; exec tee -a "$out/$name.log") 2>&1 &
  running=$!
  wait "$running"
  local rc=$?
  running=""
  case $rc in
    0) say "$name: done" ;;
    124) say "$name: stopped at its time share" ;;
    *) say "$name: failed (exit $rc); stopping"; exit "$rc" ;;
  esac
}
# done_later STAGE: the checkpoint holds a trained STAGE, built on the stages before it.
done_later() {
  [ -f "$ckpt" ] && "$PYTHON" -c "import sys; from wm_agent.world_model import WorldModel
sys.exit(0 if WorldModel.load(sys.argv[1]).is_trained(sys.argv[2]) else 1)" "$ckpt" "$1"
}

if [ "$EPISODES" -eq 0 ] && [ -f "$out/episodes" ]; then
  EPISODES=$(cat "$out/episodes")  # the first run's plan: a new measurement would change the data
elif [ "$EPISODES" -eq 0 ]; then
  rate=$("${wm[@]}" benchmark dream --real-steps 500 --num-envs 1 --dream-steps 1 | awk '/real WM-CarRacing/ {print int($(NF-1))}')
  if ! [[ $rate =~ ^[0-9]+$ ]] || [ "$rate" -eq 0 ]; then
    say "could not measure CarRacing's step rate (set EPISODES to skip the measurement)"; exit 1
  fi
  # A worker per core runs somewhat slower than one env alone: plan on 80% of the single-env rate.
  EPISODES=$("$PYTHON" -c "w=$WORKERS; n=int(w * $rate * 0.8 * $COLLECT_S / ($MAX_STEPS or 1000)); print(max(2 * w, n // (2 * w) * 2 * w))")
  echo "$EPISODES" > "$out/episodes"
  say "single CarRacing env: $rate steps/s; collecting $EPISODES episodes"
fi
collect_args=(--env WM-CarRacing-v0 --episodes "$EPISODES" --episodes-per-shard 2 --workers "$WORKERS"
              --policy brownian --seed 0 --out "$data" --no-progress)
limit=(--max-steps "$MAX_STEPS")  # 0: the env's own limit, for each command that takes it
collect_args+=("${limit[@]}")
[ "$ACTION_REPEAT" -gt 1 ] && collect_args+=(--env-kwargs "{\"action_repeat\": $ACTION_REPEAT}")
search_args=()
[ "$STOP_AFTER_NEGATIVE" -gt 0 ] && search_args+=(--stop-after-negative "$STOP_AFTER_NEGATIVE")
# Collection must finish (the trainers read a complete folder): it may take what is left but 40% of BUDGET.
stage collect 100 $((BUDGET * 2 / 5)) "${wm[@]}" collect "${collect_args[@]}"

if done_later rnn; then say "train-vae: skipped, M already trained on this V"
else stage train-vae 30 0 "${wm[@]}" train-vae --data "$data" --out "$ckpt" --epochs "$VAE_EPOCHS" --batch-size 256 \
  --device "$DEVICE" --resume --no-progress; fi
if done_later cmaes; then say "train-rnn: skipped, C already trained on this M"
else stage train-rnn 40 0 "${wm[@]}" train-rnn --data "$data" --world-model "$ckpt" --epochs "$RNN_EPOCHS" --batch-size 64 \
  --device "$DEVICE" --resume --no-progress; fi
# --timeout: a real-env generation may take the stage's whole share (the stage's own timeout still holds).
stage train-controller 70 0 "${wm[@]}" train-controller --world-model "$ckpt" --in "$WHERE" --workers "$WORKERS" \
  --popsize "$POPSIZE" --rollouts "$ROLLOUTS" --generations "$GENERATIONS" --temperature "$TEMPERATURE" \
  --device "$DEVICE" --timeout "$BUDGET" "${limit[@]}" "${search_args[@]}" --resume --no-progress
stage evaluate 100 0 "${wm[@]}" evaluate --checkpoint "$ckpt" --episodes "$EVAL_EPISODES" --workers "$WORKERS" \
  "${limit[@]}" --no-progress
say "done: $ckpt"
