#!/usr/bin/env bash
# The runs behind the out-of-sample evidence (RESULTS.md "Out-of-sample evidence"): train (with online curvature
# scoring where the report needs it), then the holdout stage at its default. One heavy job at a time, 2 threads.
#   bash results/evidence_runs.sh [digits|cifar|mnist]   (from the repository root; DATA_ROOT=../shared/data)
set -euo pipefail
PY=${PY:-.venv/bin/python}
export DATA_ROOT=${DATA_ROOT:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
N10=$DATA_ROOT/cifar10n/cifar10_dev_human_labels.csv
step() { echo "== $(date +%T) $*"; "$@"; }
digits() {
  for s in 0 1 2; do
    step $PY train_digits.py run=ev_digits_ref_s$s noise.kind=none noise.rate=0 train.seed=$((s + 10))
    for kind in symmetric asymmetric instance; do
      r=ev_digits_${kind}_s$s
      ref=$([ $kind = instance ] && echo noise.reference=ev_digits_ref_s$s || true)
      step $PY train_digits.py run=$r noise.kind=$kind noise.rate=0.1 noise.seed=$s train.seed=$s $ref
      step $PY score_digits_checkpoint.py run=$r
      step $PY holdout.py run=$r
    done
  done
}
cifar() {  # CIFAR-10N on CIFAR-10 dev: human label noise, the true labels known; then the dev set on its own labels
  for col in random1 worse aggre none; do
    r=ev_c10n_$col
    labels=$([ $col = none ] && echo "" || echo "data.labels=$N10 data.labels_column=$col")
    step $PY train_cifar10.py --config configs/cifar10_dev.yaml run=$r noise.kind=none noise.rate=0 $labels \
      score.online=true score.every=3
    step $PY score_cifar10_checkpoint.py run=$r score.every=3
    step $PY holdout.py run=$r
  done
}
mnist() {  # MNIST, a 10k stratified subset, the CPU config: symmetric, asymmetric, instance-dependent noise
  step $PY train_mnist.py run=ev_mnist_ref data.subset=10000 noise.kind=none noise.rate=0 train.seed=1
  for kind in symmetric asymmetric instance; do
    r=ev_mnist_$kind
    ref=$([ $kind = instance ] && echo noise.reference=ev_mnist_ref || true)
    step $PY train_mnist.py run=$r data.subset=10000 noise.kind=$kind noise.rate=0.1 $ref score.online=true score.every=4
    step $PY score_mnist_checkpoint.py run=$r score.every=4
    step $PY holdout.py run=$r
  done
}
"${@:-digits}"
