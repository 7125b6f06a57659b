#!/usr/bin/env bash
# Speed of camscope on the ONNX fixtures against pytorch-grad-cam on the same PyTorch models, on
# this machine, in one run (issue 10, point 9; goal: camscope's all-stage time ≤ 1.0× the
# reference's one-stage time).
#
#   scripts/compare_onnx_speed.sh [RUNS]
#
# In order:
#   1. scripts/reference_timings.py --models mobilenet_v2,vit_tiny: the median wall time of one
#      pytorch-grad-cam 1.5.7 GradCAM call (forward + backward + one map) on torchvision
#      mobilenet_v2 at features.18 and timm vit_tiny_patch16_224 at blocks.11.norm1 (tokens
#      reshape), random weights, 224×224, torch.set_num_threads(THREADS);
#   2. camscope bench on FIXTURES/onnx/{mobilenet_v2,vit_tiny}/model.onnx, both engines
#      (RAYON_NUM_THREADS=THREADS): medians of forward, backward to every stage, every stage's
#      Grad-CAM map, and "all stages" (the three together: 19 stages of MobileNetV2, 12 of ViT-Tiny);
#   3. the reference again, so that a change of load during the run shows as a gap between 1 and 3.
# Then a table: camscope's split, its all-stage median, the two reference medians, and the ratio
# camscope all stages / reference one stage, for the fast and the portable engine. The ratio is
# taken against the faster of the two reference runs (the one less disturbed, and the harder bar);
# the ratios against each run follow in brackets, and a note is printed when the two runs differ by
# more than 25%. `uptime` is printed before and after, and a note when the 1-minute load exceeds
# THREADS + 0.5 (this run's own share is about THREADS). On a loaded machine the numbers mean
# little: torch with 2 OpenMP threads slowed down up to 80× here when another process held a core,
# camscope about 4×, so a loaded run flatters camscope.
#
# RUNS (default 10): camscope bench --runs and reference --runs. Environment:
#   PYTHON     an interpreter with torch, torchvision, grad-cam 1.5.7 and timm (default python3;
#              e.g. python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchvision grad-cam timm)
#   CAMSCOPE   the binary (default target/release/camscope; cargo build --release first)
#   CAMSCOPE_FIXTURES  the big fixture set (default ../shared/fixtures, as the tests)
#   THREADS    threads on both sides (default 2)
#   KEEP       a folder to keep the raw JSON in (default: a temporary one, removed)
set -euo pipefail

runs=${1:-10}
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
bin=${CAMSCOPE:-target/release/camscope}
fixtures=${CAMSCOPE_FIXTURES:-../shared/fixtures}
threads=${THREADS:-2}
[[ -x $bin ]] || { echo "no binary at $bin; run cargo build --release first" >&2; exit 1; }
models=(mobilenet_v2 vit_tiny)
onnx=()
for m in "${models[@]}"; do
    f=$fixtures/onnx/$m/model.onnx
    [[ -f $f ]] || { echo "no $f; set CAMSCOPE_FIXTURES" >&2; exit 1; }
    onnx+=("$f")
done
"$py" -c "import torch, torchvision, pytorch_grad_cam, timm" 2>/dev/null \
    || { echo "$py lacks torch, torchvision, grad-cam or timm; set PYTHON" >&2; exit 1; }

if [[ -n ${KEEP:-} ]]; then
    out=$KEEP
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

reference() {
    RAYON_NUM_THREADS=$threads "$py" scripts/reference_timings.py --threads "$threads" --runs "$runs" \
        --models "$(IFS=,; echo "${models[*]}")" --json
}

echo "load before: $(uptime)"
load1=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
echo "reference (1/2)…" >&2
reference >"$out/reference1.json"
echo "camscope bench…" >&2
RAYON_NUM_THREADS=$threads "$bin" bench --models "$(IFS=,; echo "${onnx[*]}")" --runs "$runs" --json \
    >"$out/camscope.json"
echo "reference (2/2)…" >&2
reference >"$out/reference2.json"
echo "load after:  $(uptime)"
load2=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)

"$py" - "$out" "$runs" "$threads" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$load1" "$load2" "${models[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, runs, threads, rev = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
loads, models = [float(v) for v in sys.argv[5:7]], sys.argv[7:]
ref1 = json.loads((out / "reference1.json").read_text())
ref2 = json.loads((out / "reference2.json").read_text())
rows = json.loads((out / "camscope.json").read_text())
# bench prints its rows model by model, each model's engines in turn (an ONNX model is named after
# its file's stem, "model" for every fixture, so the order tells them apart).
per = len(rows) // len(models)
unsteady = []
print(f"camscope {rev}, {threads} threads, medians of {runs} runs; reference: pytorch-grad-cam, "
      "one GradCAM call at one stage")
head = (f"{'model':<13} {'engine':<9} {'forward':>8} {'backward':>9} {'maps':>6} {'all st.':>8}"
        f" {'ref 1':>7} {'ref 2':>7}  ratio vs min (ref 1, ref 2)")
print(head)
print("-" * len(head))
for i, name in enumerate(models):
    r1, r2 = ref1[name], ref2[name]
    ref = min(r1, r2)
    if max(r1, r2) > 1.25 * ref:
        unsteady.append(name)
    for row in rows[i * per:(i + 1) * per]:
        a = row["all_stages_ms"]
        print(f"{name:<13} {row['engine']:<9} {row['forward_ms']:>6.1f}ms {row['backward_ms']:>7.1f}ms"
              f" {row['maps_ms']:>4.1f}ms {a:>6.1f}ms {r1:>5.1f}ms {r2:>5.1f}ms"
              f"  {a / ref:.2f}× ({a / r1:.2f}×, {a / r2:.2f}×)")
if max(loads) > int(threads) + 0.5:
    print(f"note: 1-minute load {loads[0]:.2f} before, {loads[1]:.2f} after, over the {threads} threads "
          "asked for (this run's own share is about that): other work shared the cores; the ratios "
          "are unreliable, most of all the reference's")
if unsteady:
    print(f"note: the two reference runs differ by more than 25% for {', '.join(unsteady)}: "
          "the load changed during the run; compare uptime and rerun on a quiet machine")
EOF
