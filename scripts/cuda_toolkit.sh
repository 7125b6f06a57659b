#!/usr/bin/env bash
# The CUDA toolkit pieces that `--features cuda` needs, from PyPI only, and the build with them.
#
#   scripts/cuda_toolkit.sh [build]   install if needed, then cargo build --release --features cuda
#                                     (binary and examples, linked) and clippy on every target
#                                     (the default; what CI runs)
#   scripts/cuda_toolkit.sh check     install if needed, then clippy on every target --features
#                                     cuda only (it type-checks all of them, links nothing)
#   scripts/cuda_toolkit.sh env       install if needed, print `export ...` lines (eval them)
#   scripts/cuda_toolkit.sh run CMD…  install if needed, run CMD with the toolkit's environment
#
# Why PyPI: NVIDIA's own wheels are the one place a registry-only machine can get nvcc. The CUDA 12
# wheel nvidia-cuda-nvcc-cu12 ships only ptxas and libnvvm (no nvcc driver, no cicc), so the pins
# below are CUDA 13.0 Update 2, whose wheels install one real toolkit tree (nvidia/cu13/{bin,include,
# lib,nvvm}). The versions are those that PyPI's `cuda-toolkit==13.0.2` meta-package pins.
#
# Environment:
#   CAMSCOPE_CUDA_DIR   where the venv and the toolkit root live (default: target/cuda-toolkit,
#                       ignored by git)
#   CARGO_TARGET_DIR    cargo's output (default here: target/cuda, so the CPU build in target/
#                       is never invalidated)
#   CUDA_COMPUTE_CAP    the GPU generation kernels are compiled for; default: nvidia-smi's answer,
#                       else 90 (H100). 80 (A100) works too; candle's bf16 kernels need >= 80.
#   PIP_INDEX_URL, PIP_NO_INDEX, PIP_FIND_LINKS   as pip reads them: a mirror, or wheels fetched
#                       beforehand (`pip download` of the pins below) for a machine without PyPI
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_RELEASE=13.0.2
PINS=(
    nvidia-cuda-nvcc==13.0.88    # nvcc, ptxas, fatbinary, nvlink (candle-kernels' build.rs)
    nvidia-cuda-crt==13.0.88     # nvcc's crt/ headers (host_config.h, ...)
    nvidia-nvvm==13.0.88         # cicc and libdevice: nvcc cannot compile a .cu without them
    nvidia-cuda-runtime==13.0.96 # cuda_runtime.h, cuda_fp16/bf16/fp8.h, cuda.h, libcudart
    nvidia-cuda-cccl==13.0.85    # include/cccl: CUDA 13's cuda_fp16.h etc. include <cuda/std/...>
    nvidia-cuda-nvrtc==13.0.88   # cudarc links libnvrtc
    nvidia-cublas==13.1.0.3      # cudarc links libcublas and libcublasLt
    nvidia-curand==10.4.0.35     # cudarc links libcurand
)

DIR=${CAMSCOPE_CUDA_DIR:-$PWD/target/cuda-toolkit}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
VENV=$DIR/venv-$CUDA_RELEASE
ROOT=$DIR/root-$CUDA_RELEASE
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}

log() { echo "cuda_toolkit: $*" >&2; }

install() {
    local stamp=$ROOT/.pins
    # The pins are the stamp: a changed list reinstalls instead of mixing two releases.
    if [[ -f $stamp && "$(cat "$stamp")" == "${PINS[*]}" ]]; then
        return
    fi
    log "installing CUDA $CUDA_RELEASE wheels into $VENV"
    rm -rf "$VENV" "$ROOT"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${PINS[@]}"
    local cu13
    cu13=$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
    [[ -x $cu13/bin/nvcc ]] || { log "no nvcc in $cu13/bin after installing ${PINS[0]}"; exit 1; }

    # A root of the usual shape, of links into the wheels: nvcc.profile finds include/, nvvm/ and
    # lib/ next to bin/, and cudarc's build script and the linker look for lib/ and lib/stubs/.
    mkdir -p "$ROOT/lib/stubs"
    ln -s "$cu13/bin" "$ROOT/bin"
    ln -s "$cu13/include" "$ROOT/include"
    ln -s "$cu13/nvvm" "$ROOT/nvvm"
    local f base
    for f in "$cu13"/lib/*; do
        base=$(basename "$f")
        ln -s "$f" "$ROOT/lib/$base"
        # Wheels ship only libX.so.N; `-lX` at link time needs libX.so.
        [[ $base == *.so.* ]] && ln -sf "$base" "$ROOT/lib/${base%%.so.*}.so"
    done

    # cudarc (as candle-core sets it up) links the driver, -lcuda. The driver comes with the GPU's
    # kernel module, not with any wheel, and a machine without a GPU has none: link against a stub
    # with the driver's soname, as the toolkit's own lib/stubs/libcuda.so is. At run time the loader
    # finds the real libcuda.so.1 of the driver. The stub defines every cu* name of cuda.h
    # (functions and their _v2/_v3 spellings alike); a name it lacks fails the link, loudly.
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$ROOT/include/cuda.h" | sort -u |
        sed 's/.*/void &(void) {}/' >"$ROOT/lib/stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/stubs/libcuda.so" "$ROOT/lib/stubs/libcuda_stub.c"

    echo "${PINS[*]}" >"$stamp"
    log "toolkit root: $ROOT ($("$ROOT/bin/nvcc" --version | tail -1))"
}

compute_cap() {
    if [[ -n ${CUDA_COMPUTE_CAP:-} ]]; then
        echo "$CUDA_COMPUTE_CAP"
    elif command -v nvidia-smi >/dev/null && cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1) && [[ -n $cap ]]; then
        echo "${cap/./}"
    else
        # No GPU to ask: H100's generation, the machine gpu_check.sh runs on.
        echo 90
    fi
}

setup_env() {
    install
    export CUDA_ROOT=$ROOT CUDA_PATH=$ROOT CUDA_HOME=$ROOT
    export NVCC=$ROOT/bin/nvcc
    export PATH=$ROOT/bin:$PATH
    export CUDA_COMPUTE_CAP
    CUDA_COMPUTE_CAP=$(compute_cap)
    # Run time only: the wheels' libcudart/libcublas/... (never lib/stubs: the real driver wins).
    export LD_LIBRARY_PATH=$ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

timed() {
    local start=$SECONDS
    log "$*"
    "$@"
    log "done in $((SECONDS - start)) s: $*"
}

mode=${1:-build}
[[ $# -gt 0 ]] && shift
setup_env
case $mode in
    build)
        timed cargo build --release --features cuda --bins --examples
        timed cargo clippy --release --all-targets --features cuda -- -D warnings
        ;;
    check)
        timed cargo clippy --release --all-targets --features cuda -- -D warnings
        ;;
    env)
        for v in CUDA_ROOT CUDA_PATH CUDA_HOME NVCC PATH CUDA_COMPUTE_CAP LD_LIBRARY_PATH CARGO_TARGET_DIR; do
            printf 'export %s=%q\n' "$v" "${!v}"
        done
        ;;
    run)
        [[ $# -gt 0 ]] || { log "run needs a command"; exit 2; }
        exec "$@"
        ;;
    *)
        log "unknown mode '$mode' (build, check, env, run CMD...)"
        exit 2
        ;;
esac
