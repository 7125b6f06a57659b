"""Times pytorch-grad-cam on this machine, the way SPEC §8's reference was taken, so that
`camscope bench` can be compared side by side (issue 5).

Needs torch, torchvision, grad-cam and safetensors (not installed by CI: this is a measurement, not a
test):  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchvision grad-cam safetensors
Run:     RAYON_NUM_THREADS=2 /tmp/ref/bin/python scripts/reference_timings.py --threads 2
Prints the median wall time of one Grad-CAM call (forward + backward + map, one stage) for
EfficientNet-Lite0 (the repo's weights) and torchvision ResNet-18/50 (random weights: the time
does not depend on them), and of Grad-CAM at every stage of Lite0 (one call per stage).
"""

import argparse
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
from safetensors.torch import load_file

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


def gradcam_ms(model, layers, x, runs):
    cam = GradCAM(model=model, target_layers=layers)
    target = [ClassifierOutputTarget(int(model(x).argmax()))]
    return median_ms(lambda: cam(input_tensor=x, targets=target), runs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    lite = Lite0()
    state = load_file(str(ROOT / "models" / "efficientnet_lite0.safetensors"))
    missing, unexpected = lite.load_state_dict(state, strict=False)
    # The only keys not in the file are the aliases `stem.*` / `head.*` of the same modules.
    assert not unexpected and all(m.split(".")[0] in ("stem", "head") for m in missing), missing
    lite.eval()
    x = torch.randn(1, 3, 224, 224)
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.runs}")
    print(f"efficientnet-lite0 gradcam _conv_head: {gradcam_ms(lite, [lite.head], x, a.runs):.1f} ms")
    stages = [lite.stem, *lite._blocks, lite.head]
    total = sum(gradcam_ms(lite, [s], x, max(a.runs // 4, 3)) for s in stages)
    print(f"efficientnet-lite0 gradcam at all {len(stages)} stages, one call each: {total:.1f} ms")
    for name in ["resnet18", "resnet50"]:
        m = getattr(torchvision.models, name)(weights=None).eval()
        print(f"{name} gradcam layer4: {gradcam_ms(m, [m.layer4[-1]], x, a.runs):.1f} ms")


if __name__ == "__main__":
    main()
