#!/usr/bin/env bash
# One CIFAR-10N run of results/evidence_runs.sh's cifar step, by label column (random1 | worse | aggre | none):
# train with online scoring every 3rd epoch, aggregate, holdout stage at its default.
#   bash results/evidence_cifar.sh aggre [train-only]
set -euo pipefail
PY=${PY:-.venv/bin/python}
export DATA_ROOT=${DATA_ROOT:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
N10=$DATA_ROOT/cifar10n/cifar10_dev_human_labels.csv
step() { echo "== $(date +%T) $*"; "$@"; }
col=$1 r=ev_c10n_$1
labels=$([ "$col" = none ] && echo "" || echo "data.labels=$N10 data.labels_column=$col")
if [ "${2:-}" = train-only ]; then
  step $PY train_cifar10.py --config configs/cifar10_dev.yaml run=$r noise.kind=none noise.rate=0 $labels
  exit 0
fi
step $PY train_cifar10.py --config configs/cifar10_dev.yaml run=$r noise.kind=none noise.rate=0 $labels \
  score.online=true score.every=3
step $PY score_cifar10_checkpoint.py run=$r score.every=3
step $PY holdout.py run=$r
