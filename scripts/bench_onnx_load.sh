#!/usr/bin/env bash
# How long camscope takes to open an ONNX file, and how much memory, against the same weights as
# a PyTorch checkpoint, in one run (issue 19; goal: the .onnx opens in ≤ 2× the .pth's time with
# ≤ 1.25× its peak memory).
#
#   scripts/bench_onnx_load.sh [RUNS]
#
# 1. PYTHON exports torchvision resnet50(weights=None) in eval mode (seed 0): its state_dict as
#    model.pth (torch.save), the TorchScript export as model.onnx (opset 17, one file, ~100 MB)
#    and, where onnxscript is installed, the dynamo export as model_dynamo.onnx with its
#    initializers in model_dynamo.onnx.data (external data).
# 2. RUNS rounds (default 5), each one fresh process per file, the files taking turns:
#      load:   camscope bench --load-only --runs 1 --json (the time from the file to a ready
#              model, measured inside; peak resident memory, VmHWM, read right after);
#      layers: /usr/bin/time camscope layers -m FILE (the whole command: load and one forward
#              pass for the stage shapes; wall time and maximum RSS), where /usr/bin/time exists.
# Then the medians per file and the ratios of each .onnx to the .pth. `uptime` is printed before
# and after: on a machine busy with other work the times mean little (the ratios, taken from
# turns of the same rounds, a bit more).
#
# Environment:
#   PYTHON    an interpreter with torch and torchvision (+ onnx; onnxscript for the dynamo export)
#             (default python3)
#   CAMSCOPE  the binary (default target/release/camscope; cargo build --release first)
#   THREADS   RAYON_NUM_THREADS (default 2)
#   KEEP      a folder to write the models into and keep (default: a temporary one, removed)
set -euo pipefail

runs=${1:-5}
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
bin=${CAMSCOPE:-target/release/camscope}
threads=${THREADS:-2}
[[ -x $bin ]] || { echo "no binary at $bin; run cargo build --release first" >&2; exit 1; }
"$py" -c "import torch, torchvision, onnx" 2>/dev/null \
    || { echo "$py lacks torch, torchvision or onnx; set PYTHON" >&2; exit 1; }

if [[ -n ${KEEP:-} ]]; then
    out=$KEEP
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

echo "exporting ResNet-50 to $out…" >&2
"$py" - "$out" <<'EOF' >&2
import sys, warnings
import torch, torchvision
warnings.filterwarnings("ignore")
out = sys.argv[1]
torch.manual_seed(0)
m = torchvision.models.resnet50(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
torch.save(m.state_dict(), f"{out}/model.pth")
torch.onnx.export(m, (x,), f"{out}/model.onnx", input_names=["input"], output_names=["logits"],
                  dynamo=False, opset_version=17)
try:
    import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    torch.onnx.export(m, (x,), f"{out}/model_dynamo.onnx", input_names=["input"],
                      output_names=["logits"], dynamo=True, external_data=True)
except Exception as e:  # an older torch, or no onnxscript
    print(f"no dynamo export: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
EOF

files=("$out/model.pth" "$out/model.onnx")
[[ -f $out/model_dynamo.onnx ]] && files+=("$out/model_dynamo.onnx")
ls -l "$out" >&2
timer=/usr/bin/time
[[ -x $timer ]] || { echo "no $timer: the layers column is skipped" >&2; timer=; }

echo "load before: $(uptime)"
raw=$out/raw.tsv
: >"$raw"
for ((r = 1; r <= runs; r++)); do
    echo "round $r/$runs…" >&2
    for f in "${files[@]}"; do
        row=$(RAYON_NUM_THREADS=$threads "$bin" bench --load-only --models "$f" --runs 1 --json)
        "$py" -c 'import json, sys; r = json.loads(sys.argv[1])[0]; print("load", sys.argv[2], r["load_ms"], r["peak_rss_mb"], sep="\t")' \
            "$row" "$(basename "$f")" >>"$raw"
        if [[ -n $timer ]]; then
            # Wall seconds and maximum RSS in KiB of the whole command.
            m=$(RAYON_NUM_THREADS=$threads "$timer" -f '%e %M' "$bin" layers -m "$f" 2>&1 >/dev/null | tail -1)
            read -r wall kb <<<"$m"
            "$py" -c 'import sys; print("layers", sys.argv[1], float(sys.argv[2]) * 1e3, float(sys.argv[3]) / 1024, sep="\t")' \
                "$(basename "$f")" "$wall" "$kb" >>"$raw"
        fi
    done
done
echo "load after:  $(uptime)"

"$py" - "$raw" "$runs" "$threads" <<'EOF'
import statistics, sys
from collections import defaultdict
raw, runs, threads = sys.argv[1], sys.argv[2], sys.argv[3]
rows = defaultdict(lambda: ([], []))
for line in open(raw):
    what, name, ms, mb = line.rstrip("\n").split("\t")
    rows[(what, name)][0].append(float(ms))
    rows[(what, name)][1].append(float(mb) if mb != "None" else float("nan"))
med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in rows.items()}
print(f"\nResNet-50, medians of {runs} fresh processes each, RAYON_NUM_THREADS={threads}")
print("  load:   camscope bench --load-only (file to ready model; peak RSS right after)")
print("  layers: camscope layers -m FILE (load + one forward; wall time, max RSS)")
print(f"{'':8} {'file':<20} {'time':>10} {'peak RSS':>10} {'time/pth':>9} {'RSS/pth':>8}")
for what in ("load", "layers"):
    base = med.get((what, "model.pth"))
    for name in ("model.pth", "model.onnx", "model_dynamo.onnx"):
        if (what, name) not in med:
            continue
        ms, mb = med[(what, name)]
        ratio = f"{ms / base[0]:>8.2f}× {mb / base[1]:>7.2f}×" if base and name != "model.pth" else ""
        print(f"{what:8} {name:<20} {ms:>8.0f}ms {mb:>6.0f} MiB {ratio}")
print("goal (issue 19): .onnx load time ≤ 2× and peak RSS ≤ 1.25× the .pth's")
EOF
