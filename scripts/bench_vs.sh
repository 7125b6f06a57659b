#!/usr/bin/env bash
# What `--vs` costs (issue 19: no more than two single runs): `camscope sweep` of model A alone,
# of model B alone, and of A with `--vs B`, on one class-folder set, runs alternated so that all
# three see the same machine; medians of the wall seconds each sweep reports, and the ratio
# vs / (A + B).
#
#   scripts/bench_vs.sh [ROUNDS] [COPIES] [B]
#
# A is the embedded EfficientNet-Lite0; B any model camscope opens (default: Lite0 again, which
# needs nothing outside the repository; e.g. ../shared/fixtures/resnet18_seed0.pth for another
# architecture). The data set is COPIES (default 8) links to each sample photo in a folder named
# by its class. THREADS (default 2) pins RAYON_NUM_THREADS; IMAGES (default tests/fixtures/images)
# holds the photos.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
rounds=${1:-3}
copies=${2:-8}
b=${3:-efficientnet-lite0}
threads=${THREADS:-2}
images=${IMAGES:-tests/fixtures/images}
[ -d "$images" ] || { echo "no sample photos at $images (set IMAGES=DIR)" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/camscope

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=$work/val
class_folders "$data" "$images" "$copies"
n=$(find "$data" -type l | wc -l)
echo "sweep of $n images, A = efficientnet-lite0, B = $b, $threads threads, $rounds rounds, alternating"
uptime

sweep() { RAYON_NUM_THREADS=$threads sweep_seconds "$bin" sweep "$data" -o "$work/rows.csv" --overwrite "$@"; }
a_s=() b_s=() vs_s=()
for r in $(seq 1 "$rounds"); do
    a=$(sweep)
    bb=$(sweep -m "$b")
    v=$(sweep --vs "$b")
    a_s+=("$a") b_s+=("$bb") vs_s+=("$v")
    echo "round $r: A $a s, B $bb s, A --vs B $v s"
done
ma=$(median "${a_s[@]}") mb=$(median "${b_s[@]}") mv=$(median "${vs_s[@]}")
echo "median: A $ma s, B $mb s, --vs $mv s; vs / (A + B) = $(awk -v a="$ma" -v b="$mb" -v v="$mv" 'BEGIN {printf "%.2f", v / (a + b)}')"
uptime
