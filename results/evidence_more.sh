#!/usr/bin/env bash
# More runs behind the out-of-sample evidence, on the runs of results/evidence_runs.sh: a run on other CIFAR-10 data
# and fold models fine-tuned from it (init), holdout settings against cost (cost), Feldman-Zhang on digits (fz).
#   bash results/evidence_more.sh init|cost_cifar|cost_digits|fix|canary <tag> [holdout]|canary_cost|fz   (from the repository root; DATA_ROOT=../shared/data)
set -euo pipefail
PY=${PY:-.venv/bin/python}
export DATA_ROOT=${DATA_ROOT:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
step() { echo "== $(date +%T) $*"; "$@"; }
init() {  # a run on 10k other CIFAR-10 training images (bash results/cifar10_other.sh), then fold models of the
  # aggre run fine-tuned from it (holdout.init), against fold models from scratch
  step $PY train_cifar10.py --config configs/cifar10_dev.yaml run=ev_c10_other data.root=data data.folder=cifar10-other \
    noise.kind=none noise.rate=0 train.stats=false
  step $PY holdout.py run=ev_c10n_aggre holdout.name=init holdout.init=ev_c10_other holdout.train.lr=0.01 holdout.train.epochs=6 \
    "holdout.train.milestones=[4]"
}
HALF_C="holdout.train.epochs=6 holdout.train.milestones=[4,5]"
cost_cifar() {  # holdout settings against cost (the default: 2 folds of the run's own recipe, 1.0x its training)
  for r in ${COST_RUNS:-ev_c10n_random1 ev_c10n_worse}; do
    step $PY holdout.py run=$r holdout.name=f2_half $HALF_C
    [ -n "${COST_QUICK:-}" ] && continue
    step $PY holdout.py run=$r holdout.name=s4_half holdout.scheme=subsets holdout.models=4 $HALF_C
    step $PY holdout.py run=$r holdout.name=f3_23 holdout.models=3 holdout.train.epochs=8 "holdout.train.milestones=[5,7]"
  done
}
cost_digits() {
  for kind in ${COST_KINDS:-symmetric asymmetric instance}; do
    r=ev_digits_${kind}_s0
    step $PY holdout.py run=$r holdout.name=f2_half holdout.train.epochs=30
    step $PY holdout.py run=$r holdout.name=s4_half holdout.scheme=subsets holdout.models=4 holdout.train.epochs=30
    step $PY holdout.py run=$r holdout.name=f3_23 holdout.models=3 holdout.train.epochs=40
    step $PY holdout.py run=$r holdout.name=f5 holdout.models=5
    step $PY holdout.py run=$r holdout.name=mlp holdout.method=mlp
  done
}
N10=$DATA_ROOT/cifar10n/cifar10_dev_human_labels.csv
fix() {  # retrain CIFAR-10N aggre on its report's decisions (results/fix_arms.py writes results/fix/*.csv first)
  for arm in accept remove random; do
    ex=$([ $arm = remove ] && echo "data.exclude=results/fix/$arm.csv" || true)
    step $PY train_cifar10.py --config configs/cifar10_dev.yaml run=ev_fix_$arm noise.kind=none noise.rate=0 \
      data.labels=results/fix/$arm.csv $ex train.stats=false
  done
}
canary() {  # CIFAR-10N aggre with 1 % canaries (reference: the aggre run) at the defaults plus $CANARY_ARGS, as run
  # ev_c10n_aggre_can_$1; $2=holdout: also its holdout stage (the report's expected real errors need it); then
  # results/canary_validation.py. The two runs of RESULTS.md: `canary p0 holdout` with
  # CANARY_ARGS="noise.canary_power=0 noise.canary_confused=1.0" (every canary to the confused-with class), and
  # `canary q19 holdout` (the defaults: results/canary_generator.py chose them)
  local r=ev_c10n_aggre_can_$1
  step $PY train_cifar10.py --config configs/cifar10_dev.yaml run=$r noise.kind=none noise.rate=0 \
    data.labels=$N10 data.labels_column=aggre noise.canaries=${CANARY_RATE:-0.01} noise.canary_reference=ev_c10n_aggre \
    ${CANARY_ARGS:-} score.online=true score.every=6
  step $PY score_cifar10_checkpoint.py run=$r score.every=6
  [ "${2:-}" = holdout ] && step $PY holdout.py run=$r
  step $PY results/canary_validation.py --run $r --base ev_c10n_aggre --out results/canary_validation_c10n_$1
}
canary_cost() {  # test accuracy at 0.5 % canaries (train only)
  step $PY train_cifar10.py --config configs/cifar10_dev.yaml run=ev_c10n_aggre_can05 noise.kind=none noise.rate=0 \
    data.labels=$N10 data.labels_column=aggre noise.canaries=0.005 noise.canary_reference=ev_c10n_aggre train.stats=false
}
fz() {  # Feldman-Zhang's 200-model ensemble on digits against the memorization score (holdout subsets, 8 models)
  step $PY fz_memorization.py run=ev_digits_symmetric_s0 analysis.fz_models=${FZ_MODELS:-200}
  step $PY holdout.py run=ev_digits_symmetric_s0 holdout.name=s8 holdout.scheme=subsets holdout.models=8 holdout.fraction=0.7
}
"$@"
