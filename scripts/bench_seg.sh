#!/usr/bin/env bash
# Segmentation speed (issue 20): camscope's all-stage Grad-CAM of torchvision LR-ASPP-MobileNetV3
# and FCN-ResNet50 at 520×520 against pytorch-grad-cam's one-stage Grad-CAM of the same model
# (SemanticSegmentationTarget at the backbone's last stage), on this machine, in one run: the
# reference, then `camscope bench`, then the reference again; medians, and the ratio against the
# faster reference run. Goal ≤ 1.0×.
#
#   scripts/bench_seg.sh [RUNS] [MODELS]        # RUNS default 3, MODELS default lraspp,fcn
#
# PYTHON (default /work/pyref/bin/python) has torch, torchvision, grad-cam and onnx; WORK (default
# a temporary folder) keeps the 520×520 exports between runs; THREADS (default 2) pins both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
models=${2:-lraspp,fcn}
py=${PYTHON:-/work/pyref/bin/python}
threads=${THREADS:-2}
work=${WORK:-$(mktemp -d)}
[ -x "$py" ] || { echo "no python at $py (set PYTHON)" >&2; exit 2; }
cargo build --release --quiet
uptime
ref1=$(OMP_NUM_THREADS=$threads "$py" scripts/seg_reference.py "$work" --runs "$runs" --threads "$threads" --models "$models")
onnx=$("$py" -c 'import json,sys; print(",".join(v["onnx"] for v in json.loads(sys.argv[1]).values()))' "$ref1")
ours=$(RAYON_NUM_THREADS=$threads target/release/camscope bench --models "$onnx" --runs "$runs" --json)
ref2=$(OMP_NUM_THREADS=$threads "$py" scripts/seg_reference.py "$work" --runs "$runs" --threads "$threads" --models "$models")
uptime
"$py" - "$ref1" "$ref2" "$ours" <<'PY'
import json, sys
r1, r2 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = json.loads(sys.argv[3])
for name, ref in r1.items():
    best = min(ref["ms"], r2[name]["ms"])
    for row in (r for r in rows if ref["onnx"].endswith(r["model"] + ".onnx")):
        print(f"{name} ({row['engine']} engine): camscope all stages {row['all_stages_ms']:.0f} ms "
              f"(forward {row['forward_ms']:.0f}, backward {row['backward_ms']:.0f}, maps {row['maps_ms']:.0f}); "
              f"pytorch-grad-cam one stage ({ref['layer']}) {ref['ms']:.0f} / {r2[name]['ms']:.0f} ms; "
              f"ratio {row['all_stages_ms'] / best:.2f}x")
PY
