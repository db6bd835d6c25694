#!/usr/bin/env bash
# The user's loop on MNIST (a 5k stratified subset, the CPU config at 8 epochs: each training ~1.5 min on 2 cores)
# with 10 % instance-dependent noise, per seed:
# a clean reference, the noisy run (online scoring) and its holdout stage and report; the fix table's arms (the
# report's top 200 accepted blindly / removed, 200 random relabels, the oracle); a run with 1 % canaries (reference:
# the noisy run, as a user's first run) and its canary validation (CANARY_HOLDOUT=1: with the canary run's holdout
# stage, for the expected real errors).
#   bash results/mnist_loop.sh [seeds...]     (then: python results/fix_table.py; DATA_ROOT=../shared/data)
set -euo pipefail
PY=${PY:-.venv/bin/python}
export DATA_ROOT=${DATA_ROOT:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
step() { echo "== $(date +%T) $*"; "$@"; }
M=(data.subset=5000 train.epochs=8 "train.milestones=[4,6]")
for s in ${*:-0 1 2}; do
  ref=ev_m5k_ref_s$s r=ev_m5k_inst_s$s
  step $PY train_mnist.py run=$ref "${M[@]}" noise.kind=none noise.rate=0 train.seed=$((s + 10))
  step $PY train_mnist.py run=$r "${M[@]}" noise.kind=instance noise.rate=0.1 noise.reference=$ref train.seed=$s \
    score.online=true score.every=4
  step $PY score_mnist_checkpoint.py run=$r score.every=4
  step $PY holdout.py run=$r
  step $PY memorization_report.py run=$r
  step $PY results/fix_arms.py --run $r --out results/fix_mnist_s$s
  for arm in accept remove random; do
    ex=$([ $arm = remove ] && echo "data.exclude=results/fix_mnist_s$s/$arm.csv" || true)
    step $PY train_mnist.py run=ev_fixm5k_${arm}_s$s "${M[@]}" noise.kind=none noise.rate=0 train.seed=$s \
      data.labels=results/fix_mnist_s$s/$arm.csv $ex train.stats=false
  done
  step $PY train_mnist.py run=ev_fixm5k_oracle_s$s "${M[@]}" noise.kind=none noise.rate=0 train.seed=$s train.stats=false
  step $PY train_mnist.py run=ev_m5k_can_s$s "${M[@]}" noise.kind=instance noise.rate=0.1 noise.reference=$ref \
    train.seed=$s noise.canaries=0.01 noise.canary_reference=$r noise.canary_power=${CANARY_POWER:-0} \
    score.online=true score.every=4
  step $PY score_mnist_checkpoint.py run=ev_m5k_can_s$s score.every=4
  [ -n "${CANARY_HOLDOUT:-}" ] && step $PY holdout.py run=ev_m5k_can_s$s
  step $PY results/canary_validation.py --run ev_m5k_can_s$s --base $r --out results/canary_validation_mnist_s$s
done
