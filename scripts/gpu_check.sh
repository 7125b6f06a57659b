#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build with --features cuda, run every parity test with the
# network on the GPU, compare each method's maps under --device cuda with the CPU's (built-in
# model, an ONNX model, the own-model example; both engines), time the start-up and
# `camscope bench --device cuda`, and print one summary. Meant to finish in under 8 minutes on a
# 16-core H100 server, build included; each step prints its start and the time so far.
#
#   scripts/gpu_check.sh
#
# Environment:
#   CAMSCOPE_FIXTURES   the big fixture set (default: ../shared/fixtures, else shared/fixtures);
#                       without it the parity tests of ResNet-18 and the ONNX models print
#                       `skipped:` and the maps are compared on the built-in and own models only
#   CARGO_TARGET_DIR    default target/cuda (the CPU build in target/ stays valid)
#   CUDA_COMPUTE_CAP    default: what nvidia-smi reports
#   GPU_CHECK_DEVICE    default cuda; `cpu` rehearses this script where there is no GPU: no driver
#                       or toolkit checks, a build without CUDA, every step on the CPU
#   GPU_CHECK_METHODS   the methods whose maps are compared (comma-separated; default: all 13)
# A system CUDA toolkit (nvcc on PATH) is used where there is one; otherwise
# scripts/cuda_toolkit.sh installs CUDA 13.0 from PyPI under target/cuda-toolkit (which needs a
# driver for CUDA 13.0 or newer: checked below). Exit status: 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}
LOG_DIR=$CARGO_TARGET_DIR/gpu_check
mkdir -p "$LOG_DIR"
SUMMARY=()
FAILED=0
DEVICE=${GPU_CHECK_DEVICE:-cuda}

step() { printf '[gpu_check %3d s] %s\n' "$SECONDS" "$*"; }
# A summary line, printed now as progress too.
record() {
    SUMMARY+=("$1")
    printf '[gpu_check %3d s]   %s\n' "$SECONDS" "$1"
}
fail() {
    record "FAIL  $1"
    FAILED=1
}
commas() {
    local all
    all=$(printf '%s, ' "$@")
    echo "${all%, }"
}
die() {
    echo "gpu_check: $*" >&2
    exit 1
}
# Runs "$@" with its output in log file $1, printing the log's last line when it has changed
# (every 20 s at most, every 60 s when it has not) so that a long build or test run shows it is
# moving.
logged() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    local pid=$! rc=0 last=$SECONDS shown='' line
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        ((SECONDS - last >= 20)) || continue
        line=$(grep -v '^\s*$' "$log" | tail -1 | sed 's/^ *//' | cut -c1-100)
        if [[ $line != "$shown" ]] || ((SECONDS - last >= 60)); then
            step "  … ${line:-running}"
            shown=$line
            last=$SECONDS
        fi
    done
    wait "$pid" || rc=$?
    return $rc
}

command -v cargo >/dev/null || die "no cargo on PATH (install Rust with rustup first)"
command -v python3 >/dev/null || die "no python3 (the maps are compared with it)"
version_le() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" == "$1" ]]; }
nvcc_release() { nvcc --version | grep -oE 'release [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+'; }

# --- the GPU, its driver and the toolkit ------------------------------------------------------
gpu_and_toolkit() {
    command -v nvidia-smi >/dev/null || die "no nvidia-smi: this machine has no NVIDIA driver"
    local gpu driver_cuda nvcc_version root lib toolkit_env
    gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader | head -1)
    [[ -n $gpu ]] || die "nvidia-smi lists no GPU"
    # The newest CUDA the driver runs: candle's kernels are PTX, which a driver older than the
    # nvcc that wrote it refuses to load.
    driver_cuda=$(nvidia-smi | grep -oE 'CUDA Version: [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+' || true)
    step "GPU: $gpu; driver supports CUDA ${driver_cuda:-?}"
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}

    if command -v nvcc >/dev/null; then
        nvcc_version=$(nvcc_release)
        root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
        export CUDA_ROOT=${CUDA_ROOT:-$root} CUDA_PATH=${CUDA_PATH:-$root}
        for lib in "$root/lib64" "$root/lib" "$root/targets/x86_64-linux/lib"; do
            [[ -d $lib ]] && export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        done
        step "toolkit: system nvcc $nvcc_version at $root"
    else
        step "toolkit: no system nvcc; scripts/cuda_toolkit.sh installs CUDA 13.0 from PyPI (once)"
        toolkit_env=$(scripts/cuda_toolkit.sh env) || die "scripts/cuda_toolkit.sh could not install the toolkit"
        eval "$toolkit_env"
        nvcc_version=$(nvcc_release)
    fi
    # cudarc 0.19 (candle's CUDA bindings) builds with CUDA 11.4 to 13.4 and fails in its build
    # script on anything else.
    if ! version_le 11.4 "$nvcc_version" || ! version_le "$nvcc_version" 13.4; then
        die "nvcc $nvcc_version is outside what cudarc 0.19 builds with (11.4-13.4)"
    fi
    if [[ -n $driver_cuda ]] && ! version_le "$nvcc_version" "$driver_cuda"; then
        die "nvcc $nvcc_version is newer than the driver's CUDA $driver_cuda: candle's PTX would not load.
           Update the driver (CUDA 13.0 needs 580 or newer), or put an older toolkit's nvcc first on PATH."
    fi
    record "info  GPU $gpu, driver CUDA ${driver_cuda:-?}, nvcc $nvcc_version, sm_$CUDA_COMPUTE_CAP"
}

if [[ $DEVICE == cpu ]]; then
    FEATURES=()
    record "info  GPU_CHECK_DEVICE=cpu: a rehearsal of this script on the CPU (no GPU, no CUDA build)"
else
    FEATURES=(--features cuda)
    gpu_and_toolkit
fi

# --- fixtures --------------------------------------------------------------------------------
if [[ -z ${CAMSCOPE_FIXTURES:-} ]]; then
    for dir in ../shared/fixtures shared/fixtures; do
        [[ -f $dir/manifest.json ]] && { export CAMSCOPE_FIXTURES=$PWD/$dir; break; }
    done
fi
fixtures=${CAMSCOPE_FIXTURES:-}
onnx_model=${fixtures:+$fixtures/onnx/mobilenet_v2/model.onnx}
[[ -n $onnx_model && -f $onnx_model ]] || onnx_model=
[[ -n $fixtures ]] || record "info  no fixture set (CAMSCOPE_FIXTURES, ../shared/fixtures, shared/fixtures): its tests skip, no ONNX maps"

# --- build -----------------------------------------------------------------------------------
TESTS=(--test parity --test onnx_parity --test contract)
build="cargo build --release${FEATURES[*]:+ ${FEATURES[*]}}"
step "build: $build (binary, examples), then the parity tests; log $LOG_DIR/build.log"
build_start=$SECONDS
if logged "$LOG_DIR/build.log" cargo build --release "${FEATURES[@]}" --bins --examples &&
    logged "$LOG_DIR/build_tests.log" cargo test --release "${FEATURES[@]}" "${TESTS[@]}" --no-run; then
    record "ok    $build: $((SECONDS - build_start)) s"
else
    cat "$LOG_DIR/build_tests.log" >>"$LOG_DIR/build.log" 2>/dev/null || true
    tail -40 "$LOG_DIR/build.log"
    die "the CUDA build failed (whole log: $LOG_DIR/build.log)"
fi
BIN=$CARGO_TARGET_DIR/release/camscope
OWN=$CARGO_TARGET_DIR/release/examples/own_model

# --- the parity tests on the GPU -------------------------------------------------------------
step "parity tests with CAMSCOPE_TEST_DEVICE=$DEVICE: tests/parity.rs, tests/onnx_parity.rs, tests/contract.rs"
test_start=$SECONDS
test_rc=0
CAMSCOPE_TEST_DEVICE=$DEVICE logged "$LOG_DIR/tests.log" \
    cargo test --release "${FEATURES[@]}" "${TESTS[@]}" --no-fail-fast || test_rc=$?
passed=$(grep -oE '[0-9]+ passed' "$LOG_DIR/tests.log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -oE '[0-9]+ failed' "$LOG_DIR/tests.log" | awk '{s += $1} END {print s + 0}')
skipped=$(grep -c 'skipped:' "$LOG_DIR/tests.log" || true)
line="parity tests on $DEVICE: $passed passed, $failed failed, $skipped skipped (fixtures absent), $((SECONDS - test_start)) s"
if [[ $test_rc -eq 0 ]]; then
    record "ok    $line"
else
    fail "$line; log: $LOG_DIR/tests.log"
    grep -E '^test .* FAILED$|panicked at' "$LOG_DIR/tests.log" | head -20 | sed 's/^/      /' || true
fi

# --- every method under --device cuda against the CPU ----------------------------------------
# The same f32 .npy maps (`explain --npy`) from both devices, compared without numpy.
compare_py='
import struct, sys, math
def read(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<H", data[8:10])[0]
    body = data[10 + n:]
    return struct.unpack("<%df" % (len(body) // 4), body)
a, b = read(sys.argv[1]), read(sys.argv[2])
if len(a) != len(b):
    sys.exit("sizes differ: %d and %d values" % (len(a), len(b)))
ma, mb = sum(a) / len(a), sum(b) / len(b)
cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
va = sum((x - ma) ** 2 for x in a); vb = sum((y - mb) ** 2 for y in b)
r = 1.0 if va == 0 and vb == 0 else cov / math.sqrt(va * vb) if va > 0 and vb > 0 else 0.0
d = max(abs(x - y) for x, y in zip(a, b))
print("%.6f %.5f %d" % (r, d, r >= 0.999 and d <= 0.02))
'
METHODS=(gradcam hirescam gradcam-elementwise gradcam++ xgradcam layercam eigencam eigengradcam
    fullgrad guided-backprop guided-gradcam scorecam ablationcam)
[[ -n ${GPU_CHECK_METHODS:-} ]] && IFS=, read -r -a METHODS <<<"$GPU_CHECK_METHODS"
# Every stage for the methods that read the trace. The default stage only for those whose map
# does not depend on it (FullGrad, guided backprop: the same whole-network map at every stage)
# and for those that run the network once per channel (every stage would be thousands of
# forward passes on the CPU).
AT_DEFAULT_STAGE=" fullgrad guided-backprop scorecam ablationcam "
MODELS=(efficientnet-lite0 own_model)
[[ -n $onnx_model ]] && MODELS+=("$onnx_model")

# model engine device method layer npy: runs explain, prints its wall time in ms.
explain() {
    local cmd=("$BIN" explain -m "$1") layer_flag=() t0
    [[ $1 == own_model ]] && cmd=("$OWN" explain)
    [[ $5 == default ]] || layer_flag=(--layer "$5")
    t0=$(date +%s%3N)
    "${cmd[@]}" --engine "$2" --device "$3" -M "$4" "${layer_flag[@]}" --npy "$6" --json \
        >"$6.json" 2>"$6.err" || return 1
    echo $(($(date +%s%3N) - t0))
}
label_of() {
    case $1 in
        *.onnx) basename "$(dirname "$1")" ;;
        *) echo "$1" ;;
    esac
}

step "maps: every method under --device $DEVICE (both engines) against the CPU's (fast engine)"
maps_start=$SECONDS
NOT_ON_DEVICE=()
for model in "${MODELS[@]}"; do
    label=$(label_of "$model")
    for method in "${METHODS[@]}"; do
        layer=all
        [[ $AT_DEFAULT_STAGE == *" $method "* ]] && layer=default
        out=$LOG_DIR/${label}_${method}
        # The CPU's fast engine is the reference: the CPU tests hold both its engines to
        # pytorch-grad-cam and to each other.
        if ! cpu_ms=$(explain "$model" fast cpu "$method" "$layer" "$out.cpu.npy"); then
            record "skip  $label $method: the model does not offer it: $(tail -1 "$out.cpu.npy.err")"
            continue
        fi
        for engine in fast portable; do
            what="$label $method ($engine engine, layer $layer)"
            if ! gpu_ms=$(explain "$model" "$engine" "$DEVICE" "$method" "$layer" "$out.$engine.$DEVICE.npy"); then
                fail "$what cannot run on $DEVICE: $(tail -1 "$out.$engine.$DEVICE.npy.err")"
                NOT_ON_DEVICE+=("$label $method ($engine)")
                continue
            fi
            if ! cmp=$(python3 -c "$compare_py" "$out.cpu.npy" "$out.$engine.$DEVICE.npy" 2>&1); then
                fail "$what: the maps could not be compared: $(tail -1 <<<"$cmp")"
                continue
            fi
            read -r r d ok <<<"$cmp"
            if [[ $ok == 1 ]]; then
                record "ok    $what: r = $r, max |Δ| = $d; cpu $cpu_ms ms, $DEVICE $gpu_ms ms"
            else
                fail "$what: the $DEVICE map is not the CPU's: r = $r, max |Δ| = $d (bounds: r ≥ 0.999, |Δ| ≤ 0.02)"
            fi
        done
    done
done
if [[ ${#NOT_ON_DEVICE[@]} -eq 0 ]]; then
    record "ok    every method a model offers on the CPU also runs on $DEVICE"
else
    record "info  cannot run on $DEVICE (the FAIL lines above say why): ${NOT_ON_DEVICE[*]}"
fi
record "info  maps compared in $((SECONDS - maps_start)) s (times: the whole explain process, model load and CUDA start included)"

# --- start-up --------------------------------------------------------------------------------
# What `camscope photo.jpg --device cuda` does before its first picture: start, load the model,
# open the device, one forward pass and one map. The debugger itself in tmux where there is
# tmux (scripts/first_frame.sh), else the same work as `explain`.
step "start-up: --device $DEVICE against --device cpu"
startup=()
if command -v tmux >/dev/null; then
    for device in cpu "$DEVICE"; do
        if ms=$(CAMSCOPE=$BIN scripts/first_frame.sh 3 -- --device "$device" 2>&1 | tail -1); then
            startup+=("$device: ${ms#median of 3: }")
        else
            fail "the debugger on --device $device drew no map: $ms"
        fi
    done
    record "info  first map on screen (median of 3, scripts/first_frame.sh): $(commas "${startup[@]}")"
else
    for device in cpu "$DEVICE"; do
        times=()
        for _ in 1 2 3; do
            times+=("$(explain efficientnet-lite0 fast "$device" gradcam default "$LOG_DIR/startup.$device.npy" || echo failed)")
        done
        startup+=("$device: $(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p) ms")
    done
    record "info  no tmux: explain of one map, whole process, median of 3: $(commas "${startup[@]}")"
fi

# --- bench -----------------------------------------------------------------------------------
step "bench --device $DEVICE"
bench_models=efficientnet-lite0${onnx_model:+,$onnx_model}
if logged "$LOG_DIR/bench.txt" "$BIN" bench --device "$DEVICE" --models "$bench_models" --runs 5; then
    record "ok    bench --device $DEVICE (medians of 5; the ONNX model is named after its file, \"model\"):"
    while IFS= read -r row; do record "        $row"; done <"$LOG_DIR/bench.txt"
else
    fail "bench --device $DEVICE: $(tail -1 "$LOG_DIR/bench.txt")"
fi

# --- summary ---------------------------------------------------------------------------------
echo
echo "== gpu_check summary ($SECONDS s; logs in $LOG_DIR) =="
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
