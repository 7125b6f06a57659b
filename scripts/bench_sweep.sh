#!/usr/bin/env bash
# Sweep throughput, camscope against the Python loop it replaces, in one run (issue 18):
# EfficientNet-Lite0, Grad-CAM at its default stage (_conv_head), the same class-folder data set,
# the same threads, runs alternated so that both see the same machine; medians.
#
#   scripts/bench_sweep.sh [PYTHON] [ROUNDS] [COPIES]
#
# PYTHON has torch, torchvision, grad-cam and safetensors (scripts/sweep_reference.py says how to
# make one); default /tmp/ref/bin/python. The data set is COPIES (default 16) links to each sample
# photo in a folder named by its class: 5×COPIES images. THREADS (default 2) pins both:
# RAYON_NUM_THREADS for camscope, torch.set_num_threads for the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
python=${1:-/tmp/ref/bin/python}
rounds=${2:-3}
copies=${3:-16}
threads=${THREADS:-2}
images=${IMAGES:-../shared/images}

[ -x "$python" ] || { echo "no python at $python (see scripts/sweep_reference.py)" >&2; exit 2; }
[ -d "$images" ] || { echo "no sample photos at $images (set IMAGES=DIR)" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/camscope

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=$work/val
class_folders "$data" "$images" "$copies"
n=$(find "$data" -type l | wc -l)
echo "sweep of $n images (5 photos x $copies), $threads threads, $rounds rounds, alternating"

ours=() theirs=()
for r in $(seq 1 "$rounds"); do
    line=$(RAYON_NUM_THREADS=$threads "$bin" sweep "$data" -o "$work/rows.csv" --overwrite 2>&1 |
        grep 'swept .* images/s')
    rate=$(sed -E 's/.*\(([0-9.]+) images\/s\).*/\1/' <<<"$line")
    ours+=("$rate")
    json=$(OMP_NUM_THREADS=$threads "$python" scripts/sweep_reference.py "$data" --threads "$threads")
    ref=$("$python" -c 'import json,sys; print(json.loads(sys.argv[1])["images_per_s"])' "$json")
    theirs+=("$ref")
    echo "round $r: camscope $rate images/s, pytorch-grad-cam $ref images/s"
done

m_ours=$(median "${ours[@]}")
m_theirs=$(median "${theirs[@]}")
echo "median: camscope $m_ours images/s, pytorch-grad-cam (batch 32) $m_theirs images/s," \
    "ratio $(awk -v a="$m_ours" -v b="$m_theirs" 'BEGIN {printf "%.2f", a / b}')x"
