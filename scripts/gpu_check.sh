#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build with --features cuda, run every parity test with the
# network on the GPU, compare each method's maps under --device cuda with the CPU's, time them,
# and print one summary. Meant to finish in under 8 minutes on a 16-core H100 server, build
# included; each step prints its start and the time so far.
#
#   scripts/gpu_check.sh
#
# Environment:
#   CAMSCOPE_FIXTURES   the big fixture set (default ../shared/fixtures); without it the parity
#                       tests of ResNet-18 and the ONNX models print `skipped:` and only the
#                       repository's own cases run
#   CARGO_TARGET_DIR    default target/cuda (the CPU build in target/ stays valid)
#   CUDA_COMPUTE_CAP    default: what nvidia-smi reports
# A system CUDA toolkit (nvcc on PATH) is used where there is one; otherwise
# scripts/cuda_toolkit.sh installs CUDA 13.0 from PyPI under target/cuda-toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}
LOG_DIR=$CARGO_TARGET_DIR/gpu_check
mkdir -p "$LOG_DIR"
SUMMARY=()
FAILED=0

step() { printf '[gpu_check %3d s] %s\n' "$SECONDS" "$*"; }
record() { SUMMARY+=("$1"); }
fail() {
    record "FAIL  $1"
    FAILED=1
}

# --- the GPU and its driver ------------------------------------------------------------------
command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi: this machine has no NVIDIA driver" >&2; exit 1; }
gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader | head -1)
[[ -n $gpu ]] || { echo "gpu_check: nvidia-smi lists no GPU" >&2; exit 1; }
# The newest CUDA the driver runs: PTX from a newer nvcc does not load on it.
driver_cuda=$(nvidia-smi | grep -oE 'CUDA Version: [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+' || true)
step "GPU: $gpu; driver supports CUDA ${driver_cuda:-?}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
command -v cargo >/dev/null || { echo "gpu_check: no cargo on PATH (install Rust with rustup first)" >&2; exit 1; }

version_le() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" == "$1" ]]; }

# --- the toolkit -----------------------------------------------------------------------------
if command -v nvcc >/dev/null; then
    nvcc_version=$(nvcc --version | grep -oE 'release [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+')
    root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    export CUDA_ROOT=${CUDA_ROOT:-$root} CUDA_PATH=${CUDA_PATH:-$root}
    for lib in "$root/lib64" "$root/lib" "$root/targets/x86_64-linux/lib"; do
        [[ -d $lib ]] && export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    done
    step "toolkit: system nvcc $nvcc_version at $root"
else
    step "toolkit: no system nvcc; scripts/cuda_toolkit.sh (PyPI wheels)"
    eval "$(scripts/cuda_toolkit.sh env)"
    nvcc_version=$(nvcc --version | grep -oE 'release [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+')
fi
# cudarc 0.19 knows CUDA 11.4 to 13.4; anything else fails inside its build script.
if ! version_le 11.4 "$nvcc_version" || ! version_le "$nvcc_version" 13.4; then
    echo "gpu_check: nvcc $nvcc_version is outside what cudarc 0.19 builds with (11.4-13.4)" >&2
    exit 1
fi
if [[ -n $driver_cuda ]] && ! version_le "$nvcc_version" "$driver_cuda"; then
    echo "gpu_check: nvcc $nvcc_version is newer than the driver's CUDA $driver_cuda: candle's PTX would not load." >&2
    echo "           Update the driver, or put an older toolkit's nvcc first on PATH." >&2
    exit 1
fi
record "info  GPU $gpu, driver CUDA ${driver_cuda:-?}, nvcc $nvcc_version, sm_$CUDA_COMPUTE_CAP"

# --- build -----------------------------------------------------------------------------------
TESTS=(--test parity --test onnx_parity --test contract)
step "build: cargo build --release --features cuda (binary, examples) and the parity tests"
build_start=$SECONDS
if cargo build --release --features cuda --bins --examples >"$LOG_DIR/build.log" 2>&1 &&
    cargo test --release --features cuda "${TESTS[@]}" --no-run >>"$LOG_DIR/build.log" 2>&1; then
    record "ok    build --features cuda: $((SECONDS - build_start)) s"
else
    tail -40 "$LOG_DIR/build.log"
    echo "gpu_check: the CUDA build failed (whole log: $LOG_DIR/build.log)" >&2
    exit 1
fi
BIN=$CARGO_TARGET_DIR/release/camscope

# --- the parity tests on the GPU -------------------------------------------------------------
step "parity tests with CAMSCOPE_TEST_DEVICE=cuda: tests/parity.rs, tests/onnx_parity.rs, tests/contract.rs"
test_start=$SECONDS
set +e
CAMSCOPE_TEST_DEVICE=cuda cargo test --release --features cuda "${TESTS[@]}" --no-fail-fast \
    >"$LOG_DIR/tests.log" 2>&1
test_rc=$?
set -e
passed=$(grep -oE '[0-9]+ passed' "$LOG_DIR/tests.log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -oE '[0-9]+ failed' "$LOG_DIR/tests.log" | awk '{s += $1} END {print s + 0}')
skipped=$(grep -c 'skipped:' "$LOG_DIR/tests.log" || true)
line="parity tests on cuda: $passed passed, $failed failed, $skipped skipped (no fixtures), $((SECONDS - test_start)) s"
if [[ $test_rc -eq 0 ]]; then
    record "ok    $line"
else
    fail "$line; log: $LOG_DIR/tests.log"
    grep -E '^test .* FAILED$|panicked at' "$LOG_DIR/tests.log" | head -20 | sed 's/^/      /' >&2 || true
fi

# --- every method under --device cuda against the CPU, and their times ------------------------
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
assert len(a) == len(b), "sizes differ"
ma, mb = sum(a) / len(a), sum(b) / len(b)
cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
va = sum((x - ma) ** 2 for x in a); vb = sum((y - mb) ** 2 for y in b)
r = 1.0 if va == 0 and vb == 0 else cov / math.sqrt(va * vb) if va > 0 and vb > 0 else 0.0
d = max(abs(x - y) for x, y in zip(a, b))
print("%.6f %.5f" % (r, d))
'
GRADIENT_METHODS=(gradcam hirescam gradcam-elementwise gradcam++ xgradcam layercam eigencam eigengradcam
    fullgrad guided-backprop guided-gradcam)
PERTURBATION_METHODS=(scorecam ablationcam)
fixtures=${CAMSCOPE_FIXTURES:-../shared/fixtures}
MODELS=(efficientnet-lite0)
[[ -f $fixtures/onnx/mobilenet_v2/model.onnx ]] && MODELS+=("$fixtures/onnx/mobilenet_v2/model.onnx")
[[ ${#MODELS[@]} -eq 1 ]] && record "info  no ONNX fixture ($fixtures/onnx/mobilenet_v2/model.onnx): maps of the built-in model only"

millis() { date +%s%3N; }
explain() { # model engine device method layer npy → prints the wall time in ms, or fails
    local t0 layer=()
    [[ $5 == default ]] || layer=(--layer "$5")
    t0=$(millis)
    "$BIN" explain -m "$1" --engine "$2" --device "$3" -M "$4" "${layer[@]}" --npy "$6" --json \
        >"$6.json" 2>"$6.err" || return 1
    echo $(($(millis) - t0))
}
step "maps: every method, --device cuda against --device cpu, both engines"
maps_start=$SECONDS
for model in "${MODELS[@]}"; do
    label=$(basename "$(dirname "$model")")
    [[ $model == efficientnet-lite0 ]] && label=$model
    for engine in fast portable; do
        for method in "${GRADIENT_METHODS[@]}" "${PERTURBATION_METHODS[@]}"; do
            # Every stage for the methods that read the trace; the default stage for those that
            # run the network once per channel (every stage would be thousands of passes on the CPU).
            layer=all
            [[ " ${PERTURBATION_METHODS[*]} " == *" $method "* ]] && layer=default
            what="$label $engine $method"
            out=$LOG_DIR/${label}_${engine}_${method}
            if ! cpu_ms=$(explain "$model" "$engine" cpu "$method" "$layer" "$out.cpu.npy"); then
                record "skip  $what: the CPU refuses it: $(tail -1 "$out.cpu.npy.err")"
                continue
            fi
            if ! cuda_ms=$(explain "$model" "$engine" cuda "$method" "$layer" "$out.cuda.npy"); then
                fail "$what: cannot run on CUDA: $(tail -1 "$out.cuda.npy.err")"
                continue
            fi
            read -r r d < <(python3 -c "$compare_py" "$out.cpu.npy" "$out.cuda.npy")
            # SPEC §6's bounds against the reference hold between the two devices too.
            if python3 -c "import sys; sys.exit(0 if $r >= 0.999 and $d <= 0.02 else 1)"; then
                record "ok    $what (layer $layer): r = $r, max |Δ| = $d; cpu $cpu_ms ms, cuda $cuda_ms ms"
            else
                fail "$what (layer $layer): cuda map differs from the cpu's: r = $r, max |Δ| = $d"
            fi
        done
    done
done
record "info  maps compared in $((SECONDS - maps_start)) s (times: whole explain process, model load and CUDA start included)"

# --- bench -----------------------------------------------------------------------------------
if "$BIN" bench --help | grep -q -- '--device'; then
    step "bench --device cuda"
    bench_models=efficientnet-lite0
    [[ ${#MODELS[@]} -gt 1 ]] && bench_models+=",${MODELS[1]}"
    if "$BIN" bench --device cuda --models "$bench_models" --runs 5 | tee "$LOG_DIR/bench.txt"; then
        record "ok    bench --device cuda: $LOG_DIR/bench.txt"
    else
        fail "bench --device cuda failed"
    fi
else
    record "skip  camscope bench has no --device flag: the explain times above stand in for it"
fi

# --- summary ---------------------------------------------------------------------------------
echo
echo "== gpu_check summary ($SECONDS s; logs in $LOG_DIR) =="
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
