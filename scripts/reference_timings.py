"""Times pytorch-grad-cam on this machine, the way SPEC §8's reference was taken, so that
`camscope bench` can be compared side by side (issue 5).

Needs torch, torchvision, grad-cam and safetensors, and timm for vit_tiny (not installed by CI:
this is a measurement, not a test):
         python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchvision grad-cam safetensors timm
Run:     RAYON_NUM_THREADS=2 /tmp/ref/bin/python scripts/reference_timings.py --threads 2
Prints the median wall time of one Grad-CAM call (forward + backward + map, one stage) for
EfficientNet-Lite0 (the repo's weights) and torchvision ResNet-18/50 (random weights: the time
does not depend on them), and of Grad-CAM at every stage of Lite0 (one call per stage).

`--models` picks what to time (default: lite0,resnet18,resnet50). Also available, for the ONNX
fixtures' source models (issue 10; scripts/compare_onnx_speed.sh puts them beside `camscope bench`):
  mobilenet_v2  torchvision mobilenet_v2, target layer features.18
  vit_tiny      timm vit_tiny_patch16_224, target layer blocks.11.norm1 with the tokens reshape
                t[:, 1:, :].reshape(1, 14, 14, C).permute(0, 3, 1, 2)
both with random weights, eval mode, 224x224 input. `--json` prints one object instead of the text
lines: {"efficientnet-lite0": ms, "efficientnet-lite0-all": ms, "resnet18": ms, "resnet50": ms,
"mobilenet_v2": ms, "vit_tiny": ms} (those timed).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ROOT = Path(__file__).resolve().parent.parent


class SameConv(nn.Conv2d):
    """TensorFlow "SAME" padding (asymmetric on stride 2), as the Lite weights were trained."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv_bn(cin, cout, k, s, groups=1, act=True):
    layers = [SameConv(cin, cout, k, s, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=1e-3)]
    return layers + ([nn.ReLU6()] if act else [])


class Block(nn.Module):
    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        hid = cin * e
        if e != 1:
            self._expand_conv, self._bn0, _ = conv_bn(cin, hid, 1, 1)
        self._depthwise_conv, self._bn1, _ = conv_bn(hid, hid, k, s, groups=hid)
        self._project_conv, self._bn2 = conv_bn(hid, cout, 1, 1, act=False)
        self.expand, self.residual = e != 1, s == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class Stem(nn.Module):
    def __init__(self, conv, bn):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return F.relu6(self.bn(self.conv(x)))


class Lite0(nn.Module):
    STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0, _ = conv_bn(3, 32, 3, 2)
        blocks = []
        for rep, k, s, e, cin, cout in self.STAGES:
            for r in range(rep):
                blocks.append(Block(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1, _ = conv_bn(320, 1280, 1, 1)
        self._fc = nn.Linear(1280, 1000)
        # The stages pytorch-grad-cam hooks: the stem's and head's activation outputs.
        self.stem, self.head = Stem(self._conv_stem, self._bn0), Stem(self._conv_head, self._bn1)

    def forward(self, x):
        x = self.stem(x)
        for b in self._blocks:
            x = b(x)
        x = self.head(x)
        return self._fc(x.mean((2, 3)))


def median_ms(f, runs):
    f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def gradcam_ms(model, layers, x, runs, reshape_transform=None):
    cam = GradCAM(model=model, target_layers=layers, reshape_transform=reshape_transform)
    target = [ClassifierOutputTarget(int(model(x).argmax()))]
    return median_ms(lambda: cam(input_tensor=x, targets=target), runs)


def vit_tokens(t, prefix=1, grid=(14, 14)):
    """Drop the class token, lay the patch tokens on their grid (as the ONNX fixtures' references)."""
    return t[:, prefix:, :].reshape(t.size(0), *grid, t.size(2)).permute(0, 3, 1, 2)


def time_lite0(x, runs, report):
    from safetensors.torch import load_file

    lite = Lite0()
    state = load_file(str(ROOT / "models" / "efficientnet_lite0.safetensors"))
    missing, unexpected = lite.load_state_dict(state, strict=False)
    # The only keys not in the file are the aliases `stem.*` / `head.*` of the same modules.
    assert not unexpected and all(m.split(".")[0] in ("stem", "head") for m in missing), missing
    lite.eval()
    report("efficientnet-lite0", "efficientnet-lite0 gradcam _conv_head", gradcam_ms(lite, [lite.head], x, runs))
    stages = [lite.stem, *lite._blocks, lite.head]
    total = sum(gradcam_ms(lite, [s], x, max(runs // 4, 3)) for s in stages)
    report("efficientnet-lite0-all", f"efficientnet-lite0 gradcam at all {len(stages)} stages, one call each", total)


def time_resnet(name):
    def run(x, runs, report):
        m = getattr(torchvision.models, name)(weights=None).eval()
        report(name, f"{name} gradcam layer4", gradcam_ms(m, [m.layer4[-1]], x, runs))

    return run


def time_mobilenet_v2(x, runs, report):
    m = torchvision.models.mobilenet_v2(weights=None).eval()
    report("mobilenet_v2", "mobilenet_v2 gradcam features.18", gradcam_ms(m, [m.features[18]], x, runs))


def time_vit_tiny(x, runs, report):
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    ms = gradcam_ms(m, [m.blocks[11].norm1], x, runs, reshape_transform=vit_tokens)
    report("vit_tiny", "vit_tiny gradcam blocks.11.norm1", ms)


MODELS = {
    "lite0": time_lite0,
    "resnet18": time_resnet("resnet18"),
    "resnet50": time_resnet("resnet50"),
    "mobilenet_v2": time_mobilenet_v2,
    "vit_tiny": time_vit_tiny,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--models", default="lite0,resnet18,resnet50",
                   help=f"comma-separated, of: {','.join(MODELS)}")
    p.add_argument("--json", action="store_true", help='print {"name": ms, ...} instead of text')
    a = p.parse_args()
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {','.join(unknown)}; known: {','.join(MODELS)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    x = torch.randn(1, 3, 224, 224)
    results = {}

    def report(key, what, ms):
        results[key] = ms
        if not a.json:
            print(f"{what}: {ms:.1f} ms", flush=True)

    if not a.json:
        print(f"torch {torch.__version__}, {a.threads} threads, median of {a.runs}")
    for name in names:
        MODELS[name](x, a.runs, report)
    if a.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
