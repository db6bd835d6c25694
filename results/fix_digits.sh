#!/usr/bin/env bash
# The fix table on digits with instance-dependent noise, 3 seeds (runs of results/evidence_runs.sh digits): the report's
# top 200 accepted blindly / removed, 200 random relabels, and the oracle (the true labels), each retrained.
#   bash results/fix_digits.sh     (then: python results/fix_table.py)
set -euo pipefail
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
for s in 0 1 2; do
  r=ev_digits_instance_s$s
  $PY memorization_report.py run=$r > /dev/null
  $PY results/fix_arms.py --run $r --out results/fix_digits_s$s
  for arm in accept remove random; do
    ex=$([ $arm = remove ] && echo "data.exclude=results/fix_digits_s$s/$arm.csv" || true)
    $PY train_digits.py run=ev_fixd_${arm}_s$s noise.kind=none noise.rate=0 train.seed=$s \
      data.labels=results/fix_digits_s$s/$arm.csv $ex > /dev/null
  done
  $PY train_digits.py run=ev_fixd_oracle_s$s noise.kind=none noise.rate=0 train.seed=$s > /dev/null
done
