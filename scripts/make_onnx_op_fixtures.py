#!/usr/bin/env python3
"""Small ONNX fixtures for the ops segmentation networks bring: tiny torch modules exported with
both exporters, with torch's forward output and autograd gradients, for tests/onnx_ops.rs.

Each case is a module `body` (conv + ReLU: the stage the gradient is taken at), then the op
under test, as torchvision's segmentation models use it (`F.interpolate` of a score map to the
image's size, bilinear with align_corners False and True, by a size taken from the input's shape
or by a scale factor; bicubic; nearest; an axis long enough for the gather path; dilated and
dilated depthwise convolutions; MobileNetV3's hard-swish and gates; a dict output
`{"aux", "out"}`). Written to tests/fixtures/onnx_ops/<case>/:

- model.onnx (TorchScript exporter, dynamo=False, opset 17) and model_dynamo.onnx (dynamo=True,
  weights inline); for nearest ×2 also model_opset9.onnx (Upsample) and model_opset10.onnx
  (Resize with two inputs);
- input.npy (1, 3, H, W), output.npy (the `out` output), seed.npy (a fixed random tensor of the
  output's shape), grad_body.npy: the gradient of sum(out * seed) at module `body`'s output;
- manifest.json: per case its stage, exports and shapes.

Weights are torch's default initialisation under a fixed seed: the numbers mean nothing, they
are exact references all the same. Run with the reference venv (torch 2.15, onnx, onnxscript):

    /work/pyref/bin/python scripts/make_onnx_op_fixtures.py [out_dir]
"""

import json
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")

SIZE = 16


class Case(nn.Module):
    """body (conv + ReLU) → mid → head (1×1 conv to 3 'classes') → resize."""

    def __init__(self, resize, mid=None, aux=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.mid = mid if mid is not None else nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(5, 3, 1)
        self.aux = nn.Conv2d(4, 3, 1) if aux else None
        self.resize = resize

    def forward(self, x):
        f = self.body(x)
        y = self.resize(self.head(self.mid(f)), x)
        if self.aux is None:
            return y
        # The dict of torchvision's segmentation models, `aux` first so that choosing `out` by
        # name differs from choosing the first output.
        return OrderedDict([("aux", self.resize(self.aux(f), x)), ("out", y)])


def to_image(mode, align_corners=None):
    """F.interpolate to the input's own size, read off its shape (as torchvision does)."""
    return lambda y, x: F.interpolate(y, size=x.shape[-2:], mode=mode, align_corners=align_corners)


def by_scale(factor, mode, align_corners=None):
    return lambda y, x: F.interpolate(y, scale_factor=factor, mode=mode, align_corners=align_corners)


def to_size(size, mode, align_corners=None):
    return lambda y, x: F.interpolate(y, size=size, mode=mode, align_corners=align_corners)


def dilated_mid():
    # A dense dilated convolution (FCN/DeepLab's layer3/4, ASPP) and a dilated depthwise one
    # (MobileNetV3's last stage), both stride 1 with padding = dilation, then ReLU.
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=2, dilation=2),
        nn.Conv2d(6, 6, 3, padding=3, dilation=3, groups=6),
        nn.Conv2d(6, 5, 3, padding=4, dilation=4),
        nn.ReLU(),
    )


class Gates(nn.Module):
    """MobileNetV3's pieces: hard-swish, squeeze-excitation with a hard-sigmoid gate, and
    LR-ASPP's sigmoid-gated branch."""

    def __init__(self, c=5):
        super().__init__()
        self.conv = nn.Conv2d(4, c, 3, padding=1)
        self.act = nn.Hardswish()
        self.fc1, self.fc2 = nn.Conv2d(c, 3, 1), nn.Conv2d(3, c, 1)
        self.scale = nn.Conv2d(c, c, 1)
        with torch.no_grad():
            # Wide enough that hard-swish sees both of its flat tails (|x| > 3).
            self.conv.weight.mul_(3.0)

    def forward(self, x):
        x = self.act(self.conv(x))
        squeeze = F.adaptive_avg_pool2d(x, 1)
        x = x * F.hardsigmoid(self.fc2(F.relu(self.fc1(squeeze))))
        return F.relu(x) * torch.sigmoid(self.scale(F.adaptive_avg_pool2d(x, 1)))


def cases():
    """Constructors, so that each module is built after its own seed."""
    return {
        "bilinear_to_image": lambda: Case(to_image("bilinear", False)),
        "bilinear_corners_to_image": lambda: Case(to_image("bilinear", True)),
        "bilinear_scale": lambda: Case(by_scale(2.5, "bilinear", False)),
        "bilinear_corners_scale": lambda: Case(by_scale(3, "bilinear", True)),
        "bilinear_odd_size": lambda: Case(to_size((13, 19), "bilinear", False)),
        "nearest_scale": lambda: Case(by_scale(2, "nearest")),
        "nearest_odd_size": lambda: Case(to_size((11, 21), "nearest")),
        "dilated": lambda: Case(to_image("bilinear", False), mid=dilated_mid()),
        "two_outputs": lambda: Case(to_image("bilinear", False), aux=True),
        # Bicubic (ONNX cubic, a = −0.75), and an axis longer than camscope's dense-matrix limit
        # (136 > 128 after the stride-2 body) that takes the gather path.
        "bicubic": lambda: Case(to_image("bicubic", False)),
        "bilinear_wide": lambda: Case(to_image("bilinear", False)),
        "mobilenet_gates": lambda: Case(to_image("bilinear", False), mid=Gates()),
    }


# Input (height, width) where a case needs other than SIZE × SIZE.
SHAPES = {"bilinear_wide": (8, 272)}


# Old forms of the op, for the one case whose torch semantics they share (nearest ×2): opset 9
# writes Upsample with a scales input, opset 10 Resize with (X, scales) only.
LEGACY = {"nearest_scale": [("model_opset9.onnx", 9), ("model_opset10.onnx", 10)]}


def export(model, x, path, dynamo, opset=17):
    names = ["aux", "out"] if model.aux is not None else ["out"]
    if dynamo:
        torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, output_names=names)
    else:
        torch.onnx.export(
            model, x, str(path), opset_version=opset, dynamo=False, input_names=["input"], output_names=names
        )


def reference(model, x, seed):
    """The `out` output and the gradient of sum(out * seed) at `body`'s output."""
    kept = {}
    hook = model.body.register_forward_hook(lambda m, i, o: kept.setdefault("body", o))
    result = model(x)
    hook.remove()
    out = result["out"] if isinstance(result, dict) else result
    body = kept["body"]
    (grad,) = torch.autograd.grad((out * seed).sum(), body)
    return out.detach(), grad


def main():
    root = Path(__file__).resolve().parent.parent
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/fixtures/onnx_ops"
    manifest = []
    for i, (name, build) in enumerate(cases().items()):
        torch.manual_seed(1000 + i)
        model = build().eval()
        for p in model.parameters():
            # Larger than the default init, so that every gradient is far from rounding noise.
            p.data.mul_(2.0)
        x = torch.randn(1, 3, *SHAPES.get(name, (SIZE, SIZE)))
        with torch.no_grad():
            result = model(x)
        out = result["out"] if isinstance(result, dict) else result
        seed = torch.randn(out.shape)
        out, grad = reference(model, x, seed)
        case_dir = out_dir / name
        case_dir.mkdir(parents=True, exist_ok=True)
        exports = ["model.onnx", "model_dynamo.onnx"]
        export(model, x, case_dir / "model.onnx", False)
        export(model, x, case_dir / "model_dynamo.onnx", True)
        for fname, opset in LEGACY.get(name, []):
            export(model, x, case_dir / fname, False, opset)
            exports.append(fname)
        for fname, t in (("input", x), ("output", out), ("seed", seed), ("grad_body", grad)):
            np.save(case_dir / f"{fname}.npy", t.numpy().astype(np.float32))
        manifest.append(
            {
                "name": name,
                "stage": "body",
                "exports": exports,
                "input": list(x.shape),
                "output": list(out.shape),
                "stage_shape": list(grad.shape),
                "outputs": ["aux", "out"] if model.aux is not None else ["out"],
            }
        )
        print(name, tuple(out.shape), "grad", tuple(grad.shape))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
