#!/usr/bin/env bash
# Time from starting the debugger in tmux to its first class activation map on screen.
#
#   scripts/first_frame.sh [RUNS] [-- EXTRA CAMSCOPE ARGS]
#
# Runs the release binary (CAMSCOPE=path overrides target/release/camscope) with default settings
# in a detached 160×50 tmux session, polls `tmux capture-pane` every 10 ms until the picture is
# drawn (half-block cells in the picture pane; the colour scale uses only the upper half block),
# and prints each run's milliseconds and their median. The time includes starting the process,
# loading the model, the terminal query and the first map; tmux's own server start is kept out by
# a session that lives for the whole measurement.
set -euo pipefail

runs=5
if [[ $# -gt 0 && $1 != "--" ]]; then
    runs=$1
    shift
fi
[[ ${1:-} == "--" ]] && shift
extra=("$@")

cd "$(dirname "$0")/.."
. scripts/lib.sh
bin=${CAMSCOPE:-target/release/camscope}
[[ -x $bin ]] || { echo "no binary at $bin; run cargo build --release first" >&2; exit 1; }
command -v tmux >/dev/null || { echo "tmux is not installed" >&2; exit 1; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

keep=camscope-ff-keep-$$
tmux new-session -d -s "$keep" "sleep 600"
trap 'tmux kill-session -t "$keep" 2>/dev/null || true' EXIT

# Pictures are drawn with ▀ and ▄; 100 lower half blocks means the map is there.
drawn() { [[ $(tmux capture-pane -t "$1" -p | grep -o '▄' | wc -l) -ge 100 ]]; }

times=()
for ((i = 1; i <= runs; i++)); do
    name=camscope-ff-$$-$i
    start=$(now_ms)
    tmux new-session -d -s "$name" -x 160 -y 50 "$bin ${extra[*]:-}; sleep 30"
    while ! drawn "$name"; do
        if (($(now_ms) - start > 20000)); then
            echo "run $i: no map after 20 s; screen:" >&2
            tmux capture-pane -t "$name" -p >&2
            tmux kill-session -t "$name"
            exit 1
        fi
        sleep 0.01
    done
    ms=$(($(now_ms) - start))
    # The debugger's own measurement, from its status line, for comparison.
    sleep 0.2
    own=$(tmux capture-pane -t "$name" -p | grep -o 'first map on screen [0-9.]* m\?s' || true)
    proto=$(tmux capture-pane -t "$name" -p | grep -o '· [a-z0-9]* images' || true)
    tmux kill-session -t "$name"
    echo "run $i: ${ms} ms  (${own:-no status line} ${proto})"
    times+=("$ms")
    sleep 0.3
done
median=$(median "${times[@]}")
echo "median of $runs: ${median} ms"
