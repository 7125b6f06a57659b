"""The Python side of scripts/bench_seg.sh: exports torchvision segmentation models at 520x520
(torchvision's evaluation size; random weights, eval mode: the time does not depend on them) with
the TorchScript exporter, and times one pytorch-grad-cam 1.5.7 GradCAM call with the tutorial's
SemanticSegmentationTarget (the largest class's arg-max region) at the backbone's last stage.

    python scripts/seg_reference.py OUT_DIR [--runs 3] [--threads 2] [--models lraspp,fcn]

Prints one JSON object: {"lraspp": {"onnx": path, "layer": ..., "ms": median}, ...}.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

MODELS = {
    "lraspp": ("lraspp_mobilenet_v3_large", "backbone.16"),
    "fcn": ("fcn_resnet50", "backbone.layer4"),
}


class Out(torch.nn.Module):
    """The tutorial's wrapper: the dict's `out`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="lraspp,fcn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {}
    for name in args.models.split(","):
        builder, layer = MODELS[name]
        model = getattr(torchvision.models.segmentation, builder)(weights=None, weights_backbone=None).eval()
        x = torch.randn(1, 3, 520, 520)
        onnx = args.out / f"{name}520.onnx"
        if not onnx.exists():
            torch.onnx.export(model, (x,), str(onnx), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["out", "aux"] if getattr(model, "aux_classifier", None) else ["out"])
        wrapped = Out(model)
        with torch.no_grad():
            seg = wrapped(x)[0].argmax(0)
        category = int(torch.bincount(seg.flatten()).argmax())
        mask = (seg == category).float().numpy()
        cam = GradCAM(model=wrapped, target_layers=[model.get_submodule(layer)])
        times = []
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            cam(input_tensor=x, targets=[SemanticSegmentationTarget(category, mask)])
            times.append((time.perf_counter() - t) * 1e3)
        report[name] = {"onnx": str(onnx), "layer": layer, "ms": statistics.median(times[1:])}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
