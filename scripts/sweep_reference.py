"""The Python loop that `camscope sweep` replaces (issue 18's speed reference): torchvision's
`ImageFolder` + a `DataLoader` (batch 32) + pytorch-grad-cam's Grad-CAM on EfficientNet-Lite0 at
`_conv_head`, one target per image (its true class), and per image what a sweep row holds: top-k,
p(true), cross-entropy loss, correct, and the map's energy.

Needs torch, torchvision, grad-cam and safetensors (not installed by CI: a measurement, not a test):
         python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -r scripts/requirements-fixtures.txt
Run:     /tmp/ref/bin/python scripts/sweep_reference.py DIR --threads 2 [-o rows.csv]
DIR is a class-folder layout (first-level folder = class, named by an ImageNet label or index, as
camscope matches them). Prints one JSON object: {"images": n, "seconds": s, "images_per_s": r,
"accuracy": a}; the clock starts after the model is built and stops after the last row, as
camscope's "swept N images in S s" does. scripts/bench_sweep.sh runs both in one run.

Its rows agree with camscope's to float rounding, except where torchvision's `Resize` truncates the
longer side (451x300 -> 384x256) where camscope, like scripts/make_fixtures.py, rounds (385): a
pixel's difference in the crop, a few 1e-3 in the probabilities. It does not change the timing.
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_timings import ROOT, Lite0  # noqa: E402


def load_lite0():
    from safetensors.torch import load_file

    lite = Lite0()
    state = load_file(str(ROOT / "models" / "efficientnet_lite0.safetensors"))
    missing, unexpected = lite.load_state_dict(state, strict=False)
    assert not unexpected and all(m.split(".")[0] in ("stem", "head") for m in missing), missing
    return lite.eval()


def model_index(folder, labels):
    """The model's class of a folder name: an index, or a label's whole name in any case."""
    if folder.isdigit() and int(folder) < len(labels):
        return int(folder)
    lowered = [l.lower() for l in labels]
    if folder.lower() in lowered:
        return lowered.index(folder.lower())
    sys.exit(f"folder {folder!r} names no ImageNet class")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="DataLoader processes decoding ahead")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("-o", "--output", help="write the rows as CSV here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    labels = (ROOT / "models" / "imagenet_classes.txt").read_text().splitlines()
    # What camscope's Lite0 card (models/efficientnet-lite0.toml) says: shorter side to 256 (PIL
    # bilinear), centre crop 224, x = (pixel - 127) / 128.
    tf = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize([127 / 255] * 3, [128 / 255] * 3),
    ])
    data = ImageFolder(a.dir, transform=tf)
    to_model = [model_index(c, labels) for c in data.classes]
    loader = DataLoader(data, batch_size=a.batch_size, num_workers=a.workers)
    lite = load_lite0()
    cam = GradCAM(model=lite, target_layers=[lite.head])

    rows, correct, seen = [], 0, 0
    start = time.perf_counter()
    for x, y in loader:
        truth = [to_model[int(c)] for c in y]
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in truth])
        logits = cam.outputs.detach()
        probs = F.softmax(logits, dim=1)
        loss = F.cross_entropy(logits, torch.tensor(truth), reduction="none")
        top_p, top_i = probs.topk(a.top_k, dim=1)
        for i, t in enumerate(truth):
            path = data.samples[seen][0]
            seen += 1
            correct += int(top_i[i, 0]) == t
            rows.append([path, t, *top_i[i].tolist(), *top_p[i].tolist(), float(probs[i, t]),
                         float(loss[i]), int(top_i[i, 0]) == t, float(maps[i].sum())])
    seconds = time.perf_counter() - start

    if a.output:
        with open(a.output, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "true_index", *[f"top{k + 1}_index" for k in range(a.top_k)],
                        *[f"top{k + 1}_p" for k in range(a.top_k)], "p_true", "loss", "correct",
                        "map_sum"])
            w.writerows(rows)
    print(json.dumps({"images": seen, "seconds": round(seconds, 3),
                      "images_per_s": round(seen / seconds, 2),
                      "accuracy": round(correct / max(seen, 1), 4)}))


if __name__ == "__main__":
    main()
