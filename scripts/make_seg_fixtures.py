"""Reference fixtures for segmentation models (issue 20): torchvision FCN / LR-ASPP / DeepLabV3 with
seeded random weights, exported to ONNX with both exporters, and maps from pytorch-grad-cam 1.5.7 with
`SemanticSegmentationTarget`.

Setup, once (CPU is enough; the same venv as scripts/make_fixtures.py plus the ONNX packages):
    python3 -m venv /tmp/fixenv && /tmp/fixenv/bin/pip install -r scripts/requirements-fixtures.txt

Run from the repository root:
    /tmp/fixenv/bin/python scripts/make_seg_fixtures.py tests/fixtures/seg      # in-repo set, 12.7 MB (~2 min)
    /tmp/fixenv/bin/python scripts/make_seg_fixtures.py /work/seg-big --big     # full size, 410 MB (~25 min)

`--cases a,b` computes only those cases and merges them into OUT_DIR/manifest.json.
tests/fixtures/seg/README.md describes the layout, the models, the targets and the checks.
"""

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "fixtures" / "images"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Calibration images for the BatchNorm statistics (see `nontrivial`).
CALIBRATION = ["chelsea.png", "coffee.png", "dogs.png", "grace_hopper.jpg"]

GRADIENT = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigengradcam"]
PERTURB = ["scorecam", "ablationcam"]

# Each case: how the model is built (`build`), its input, the target layers and which maps.
# `maps`: [layer, methods, n]: the methods at that layer for the n classes that take the most pixels
# (n = 2 or 1; "eigencam" ignores the target: computed for the first class only); `regions`: extra
# maps [method, layer, region] for the class that takes the most pixels, region "box" or "whole".
ALL = GRADIENT + ["eigencam"] + PERTURB
SMALL = [
    {"name": "fcn_tiny", "build": "fcn_tiny", "seed": 0, "image": "chelsea.png", "size": [112, 112],
     "dynamo_names": False,
     "layers": ["backbone.layer4", "backbone.layer3"],
     "maps": [["backbone.layer4", ALL, 2], ["backbone.layer3", ALL, 1]],
     "box": [8, 40, 64, 88],
     "regions": [["gradcam", "backbone.layer4", "box"], ["gradcam", "backbone.layer4", "whole"],
                 ["ablationcam", "backbone.layer4", "box"]]},
    {"name": "lraspp_tiny", "build": "lraspp_tiny", "seed": 1, "image": "dogs.png", "size": [128, 128],
     "layers": ["backbone.16", "backbone.12"],
     "maps": [["backbone.16", ALL, 2], ["backbone.12", ALL, 1]],
     "box": [24, 16, 80, 72],
     "regions": [["gradcam", "backbone.16", "box"], ["gradcam", "backbone.16", "whole"],
                 ["scorecam", "backbone.16", "whole"]]},
    # Non-square (H 96 < W 160): the lraspp_tiny build at another input size; seed 1 again (at this
    # size and image the arg-max segmentation has five classes >= 10 %, in regions).
    {"name": "lraspp_wide", "build": "lraspp_tiny", "seed": 1, "image": "coffee.png", "size": [96, 160],
     "layers": ["backbone.16", "backbone.12"],
     "maps": [["backbone.16", ALL, 2], ["backbone.12", ALL, 1]],
     "box": [40, 56, 104, 92],
     "regions": [["gradcam", "backbone.16", "box"], ["gradcam", "backbone.16", "whole"]]},
]
BIG = [
    # seed 14: with seeds 10 and 13 fewer than three classes took >= 5 % of the pixels.
    {"name": "fcn_resnet50", "build": "fcn_resnet50", "seed": 14, "image": "dogs.png", "size": [224, 224],
     "layers": ["backbone.layer4", "backbone.layer3"],
     # Score-CAM / Ablation-CAM need 2048 (1024) full forward passes of FCN-ResNet50: left out.
     "maps": [["backbone.layer4", GRADIENT + ["eigencam"], 2], ["backbone.layer3", GRADIENT + ["eigencam"], 2]],
     "box": [40, 60, 150, 190],
     "regions": [["gradcam", "backbone.layer4", "box"], ["gradcam", "backbone.layer4", "whole"]]},
    {"name": "lraspp_mobilenet_v3_large", "build": "lraspp_mobilenet_v3_large", "seed": 11,
     "image": "chelsea.png", "size": [224, 224],
     "layers": ["backbone.16", "backbone.12"],
     "maps": [["backbone.16", ALL, 2], ["backbone.12", GRADIENT + ["eigencam"], 2]],
     "box": [100, 30, 200, 130],
     "regions": [["gradcam", "backbone.16", "box"], ["gradcam", "backbone.16", "whole"]]},
    {"name": "deeplabv3_mobilenet_v3_large", "build": "deeplabv3_mobilenet_v3_large", "seed": 12,
     "image": "coffee.png", "size": [224, 224], "dynamo_names": False,
     "layers": ["backbone.16", "backbone.12"],
     "maps": [["backbone.16", GRADIENT + ["eigencam"], 2], ["backbone.12", GRADIENT + ["eigencam"], 2]],
     "box": [60, 40, 200, 150],
     "regions": [["gradcam", "backbone.16", "box"], ["gradcam", "backbone.16", "whole"]]},
]

# How each model is built, as recorded in the manifest (`builder`).
BUILDERS = {
    "fcn_tiny": (
        "torchvision ResNet(Bottleneck, [1, 1, 2, 2], replace_stride_with_dilation=[False, True, True]) "
        "narrowed to 1/16 width: inplanes 4, conv1 Conv2d(3, 4, 7, 2, 3, bias=False), bn1 BatchNorm2d(4), "
        "layer1..4 = ResNet._make_layer(Bottleneck, planes, blocks[, stride=2, dilate]) with planes 4, 8, 16, "
        "32 and blocks 1, 1, 2, 2 (outputs 16, 32, 64, 128 channels; output stride 8; 3x3 convolutions "
        "dilated 1 in layer3.0, 2 in layer3.1 and layer4.0, 4 in layer4.1, as torchvision does), ResNet's own "
        "weight init; FCN(IntermediateLayerGetter(resnet, {'layer4': 'out', 'layer3': 'aux'}), "
        "FCNHead(128, 21), FCNHead(64, 21)) - torchvision's _fcn_resnet with aux_loss=True at this width"),
    "lraspp_tiny": (
        "torchvision.models.segmentation.lraspp._lraspp_mobilenetv3("
        "torchvision.models.mobilenet_v3_large(weights=None, width_mult=0.2, reduced_tail=True, "
        "dilated=True), num_classes=21) - what lraspp_mobilenet_v3_large() does, on a narrower backbone"),
    "fcn_resnet50": ("torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, "
                     "num_classes=21, aux_loss=True)"),
    "lraspp_mobilenet_v3_large": ("torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, "
                                  "weights_backbone=None, num_classes=21)"),
    "deeplabv3_mobilenet_v3_large": ("torchvision.models.segmentation.deeplabv3_mobilenet_v3_large("
                                     "weights=None, weights_backbone=None, num_classes=21, aux_loss=False)"),
}


# ---------------------------------------------------------------- models

def build(kind):
    import torch
    import torchvision
    from torchvision.models import segmentation as seg

    if kind == "fcn_tiny":
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.models.resnet import Bottleneck, ResNet
        from torchvision.models.segmentation.fcn import FCN, FCNHead

        net = ResNet(Bottleneck, [1, 1, 2, 2], replace_stride_with_dilation=[False, True, True])
        # The same network at 1/16 of the width, rebuilt with ResNet's own _make_layer (which also
        # does the stride -> dilation replacement: it reads self.dilation as it goes).
        net.inplanes, net.dilation = 4, 1
        net.conv1 = torch.nn.Conv2d(3, 4, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = torch.nn.BatchNorm2d(4)
        net.layer1 = net._make_layer(Bottleneck, 4, 1)
        net.layer2 = net._make_layer(Bottleneck, 8, 1, stride=2, dilate=False)
        net.layer3 = net._make_layer(Bottleneck, 16, 2, stride=2, dilate=True)
        net.layer4 = net._make_layer(Bottleneck, 32, 2, stride=2, dilate=True)
        for m in net.modules():  # ResNet.__init__'s initialisation, on the new modules
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.constant_(m.weight, 1)
                torch.nn.init.constant_(m.bias, 0)
        backbone = IntermediateLayerGetter(net, return_layers={"layer4": "out", "layer3": "aux"})
        return FCN(backbone, FCNHead(128, 21), FCNHead(64, 21))
    if kind == "lraspp_tiny":
        from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

        mnv3 = torchvision.models.mobilenet_v3_large(weights=None, width_mult=0.2, reduced_tail=True,
                                                     dilated=True)
        return _lraspp_mobilenetv3(mnv3, 21)
    if kind == "fcn_resnet50":
        return seg.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    if kind == "lraspp_mobilenet_v3_large":
        return seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    if kind == "deeplabv3_mobilenet_v3_large":
        return seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                                aux_loss=False)
    raise SystemExit(f"unknown model {kind}")


# How `load_image` makes the input (recorded in the manifest's `preprocess`, for any H, W).
PREPROCESS = (
    "tests/fixtures/images/<image> as RGB; the largest centred crop with the aspect ratio W/H: if "
    "iw * H > ih * W (too wide) crop width cw = round(ih * W / H), ch = ih, else cw = iw, ch = round(iw * H / W); "
    "left = (iw - cw) // 2, top = (ih - ch) // 2; PIL resize((W, H), Image.BILINEAR) of that crop; "
    "/ 255; minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225); NCHW float32 "
    "(input.npy is that tensor: compare on it)")


def forward_as_returned(model, x, layers, name):
    """model(x) without gradients, and each layer's output shape; fails when the rest of the
    forward pass rewrote a layer's output in place (SPEC §1: pytorch-grad-cam on CPU would then
    read the rewritten values, camscope the returned ones)."""
    import torch

    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, o, n=n: seen.__setitem__(n, (o, o.clone()))) for n in layers]
    with torch.no_grad():
        result = model(x)
    for hk in hooks:
        hk.remove()
    rewritten = [n for n, (o, copy) in seen.items() if not torch.equal(o, copy)]
    if rewritten:
        raise SystemExit(f"{name}: outputs of {rewritten} are rewritten in place later")
    return result, {n: list(o.shape) for n, (o, _) in seen.items()}


def load_image(name, size):
    """RGB, the largest centred crop of the target aspect ratio (offsets rounded down), PIL bilinear
    resize to W×H, /255, ImageNet mean/std, NCHW f32."""
    from PIL import Image

    h, w = size
    img = Image.open(IMAGES / name).convert("RGB")
    iw, ih = img.size
    if iw * h > ih * w:  # too wide
        cw, ch = round(ih * w / h), ih
    else:
        cw, ch = iw, round(iw * h / w)
    left, top = (iw - cw) // 2, (ih - ch) // 2
    img = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


def nontrivial(model, seed, size):
    """Seeded random weights that give a real segmentation. torchvision's initialisation after
    torch.manual_seed(seed); then, from torch.manual_seed(seed + 1), every BatchNorm2d in module order
    gets weight ~ U(0.75, 1.25), bias ~ N(0, 0.1) (as scripts/make_fixtures.py); then the running
    statistics are set to the batch statistics of the calibration images (CALIBRATION and their
    mirror images, at the case's size; one train-mode pass with momentum=None, Dropout off): every BatchNorm
    output then has mean ~ bias and std ~ weight on natural images, so activations neither vanish nor
    explode down the network. Eval mode afterwards."""
    import torch

    torch.manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.75, 1.25)
            m.bias.normal_(0, 0.1)
    batch = np.concatenate([load_image(n, size) for n in CALIBRATION])
    batch = torch.from_numpy(np.concatenate([batch, batch[..., ::-1]]).copy())
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for m in model.modules():  # DeepLabV3's ASPP has a Dropout before a BatchNorm
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.no_grad():
        model(batch)
    for m in bns:
        m.momentum = 0.1
    model.eval()
    return model


def wrapper(model):
    """pytorch-grad-cam's tutorial wrapper: the dict's "out"."""
    import torch

    class SegmentationModelOutputWrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    return SegmentationModelOutputWrapper(model).eval()


def cam_class(method):
    import pytorch_grad_cam as g

    return {"gradcam": g.GradCAM, "hirescam": g.HiResCAM, "gradcam++": g.GradCAMPlusPlus,
            "xgradcam": g.XGradCAM, "layercam": g.LayerCAM, "eigencam": g.EigenCAM,
            "eigengradcam": g.EigenGradCAM, "scorecam": g.ScoreCAM, "ablationcam": g.AblationCAM}[method]


# ---------------------------------------------------------------- ONNX

def describe_onnx(path):
    """Inputs, outputs (names and shapes), opset, op types (sorted), Resize attributes, external data."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
    ops, resize = set(), []
    consts = {t.name: t for t in m.graph.initializer}
    producer = {}
    for n in m.graph.node:
        for o in n.output:
            producer[o] = n
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t

    def source(name):
        """A Resize input: absent, a constant (its values), or what computes it."""
        if not name:
            return None
        if name in consts:
            t = consts[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:
                return {"constant": "external"}
            return {"constant": onnx.numpy_helper.to_array(t).tolist()}
        if name in producer:
            return {"computed_by": producer[name].op_type}
        return {"graph_input": name}

    def walk(graph):
        for n in graph.node:
            ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}")
            if n.op_type == "Resize":
                a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
                a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
                ins = dict(zip(["X", "roi", "scales", "sizes"], n.input))
                a["inputs"] = {k: source(v) for k, v in ins.items() if k != "X"}
                resize.append({"node": n.name, **a})
            for x in n.attribute:
                if x.type == onnx.AttributeProto.GRAPH:
                    walk(x.g)
    walk(m.graph)
    for f in m.functions:
        walk(f)
    external = sorted({d.value for t in m.graph.initializer for d in t.external_data if d.key == "location"})
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    return {"inputs": [[i.name, dims(i)] for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}],
            "outputs": [[o.name, dims(o)] for o in m.graph.output],
            "opset": opset.get("ai.onnx"), "op_types": sorted(ops), "resize": resize,
            "external_data": external, "nodes": len(m.graph.node)}


def export(model, x, folder, outputs, dynamo_names):
    """Both exporters, as a user would call them; returns the manifest's `exports`. The dynamo export
    is given the names too when `dynamo_names`, else it is the bare default call (its graph then
    names the input `x` and the outputs after the ops that compute them)."""
    import torch

    exports = []
    t = time.perf_counter()
    torch.onnx.export(model, (x,), str(folder / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=outputs)
    exports.append({"file": "model.onnx", "exporter": "torchscript",
                    "call": f"torch.onnx.export(model, (x,), 'model.onnx', dynamo=False, opset_version=17, "
                            f"input_names=['input'], output_names={outputs})",
                    "seconds": time.perf_counter() - t})
    t = time.perf_counter()
    for old in folder.glob("model_dynamo.onnx*"):
        old.unlink()
    names = {"input_names": ["input"], "output_names": outputs} if dynamo_names else {}
    torch.onnx.export(model, (x,), str(folder / "model_dynamo.onnx"), dynamo=True, **names)
    call = "".join(f", {k}={v}" for k, v in names.items())
    exports.append({"file": "model_dynamo.onnx", "exporter": "dynamo",
                    "call": f"torch.onnx.export(model, (x,), 'model_dynamo.onnx', dynamo=True{call})",
                    "seconds": time.perf_counter() - t})
    for e in exports:
        e.update(describe_onnx(folder / e["file"]))
    return exports


def check_exports(folder, exports, x, reference):
    """Runs each export with onnxruntime (else onnx.reference) and compares every output with
    PyTorch's (in order: the graph's outputs are the dict's values); fails beyond
    1e-4 · max(1, max |y|)."""
    for e in exports:
        path = str(folder / e["file"])
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            got = sess.run(None, {e["inputs"][0][0]: x})
            engine = f"onnxruntime {ort.__version__}"
        except ImportError:
            from onnx.reference import ReferenceEvaluator

            got = ReferenceEvaluator(path).run(None, {e["inputs"][0][0]: x})
            engine = "onnx.reference"
        names = [o[0] for o in e["outputs"]]
        diffs = {}
        for name, y, ref_key in zip(names, got, reference):
            ref = reference[ref_key]
            d = float(np.abs(y - ref).max()) if y.shape == ref.shape else float("inf")
            scale = max(1.0, float(np.abs(ref).max()))
            diffs[name] = {"torch_output": ref_key, "max_abs_diff": d, "max_abs_ref": float(np.abs(ref).max())}
            if not d <= 1e-4 * scale:
                raise SystemExit(f"{path}: output {name} ({ref_key}) differs from PyTorch: {d:.2e}")
        e["check"] = {"engine": engine, "outputs": diffs}


def own_gradcam(model, layer, x, cls, mask):
    """Grad-CAM from its definition (SPEC §2-3), without pytorch-grad-cam, as a check of the
    reference and of the target: A = the layer's output, G = d sum(out[0, cls] * mask) / dA,
    M = ReLU(sum_k mean(G_k) A_k), min-max, cv2 bilinear resize to W×H, and BaseCAM's second
    ReLU + min-max over the resized map (aggregate_multi_layers; it matters here: up to 0.1)."""
    import cv2
    import torch

    acts = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: acts.__setitem__("a", o))
    out = model(x)["out"]
    hook.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad((out[0, cls] * torch.from_numpy(mask)).sum(), a)
    m = torch.relu((g[0].mean((1, 2))[:, None, None] * a[0]).sum(0)).detach().numpy()
    m = m - m.min()
    m = m / (1e-7 + m.max())
    m = np.maximum(cv2.resize(m, (mask.shape[1], mask.shape[0])), 0)
    m = m - m.min()
    return m / (1e-7 + m.max())


def own_ablationcam(model, layer, x, cls, mask, batch=32):
    """Ablation-CAM as pytorch-grad-cam 1.5.7 computes it (AblationCAM + AblationLayer, all channels,
    batch 32), one channel at a time without it. y0 = the target on the model's output; y_k = the
    target with channel k of the layer's output A replaced: by 0 when min(A) = 0, else by
    min(A) - 1e7 * (k % batch + 1). (AblationLayer.__call__ re-reads torch.min of the batch it is
    filling after each channel it writes, so the value steps down by 1e7 per position in the batch of
    32; SPEC §3's "min(A) - 1e7" is the first of them.) w_k = (y0 - y_k) / y0, M = sum_k w_k A_k,
    then BaseCAM's post-processing as in own_gradcam."""
    import cv2
    import torch

    store = {}
    target = model.get_submodule(layer)
    hook = target.register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    m = torch.from_numpy(mask)
    with torch.no_grad():
        y0 = float((model(x)["out"][0, cls] * m).sum())
        hook.remove()
        a = store["a"][0]
        low = float(a.min())
        ys = []
        for k in range(a.shape[0]):
            ablated = a.clone()
            ablated[k] = 0.0 if low == 0 else low - 1e7 * (k % batch + 1)
            hook = target.register_forward_hook(lambda _m, _i, o, t=ablated: t[None])
            ys.append(float((model(x)["out"][0, cls] * m).sum()))
            hook.remove()
    w = (np.float32(y0) - np.float32(ys)) / np.float32(y0)
    cam = np.maximum((w[:, None, None] * a.numpy()).sum(0), 0)
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    cam = np.maximum(cv2.resize(cam, (mask.shape[1], mask.shape[0])), 0)
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def reference_f64(wrapped64, model64, x64, method, layer, cls, mask, stored):
    """How well-conditioned a float32 reference is: the same map by pytorch-grad-cam with the model and
    the input in float64 (model.double()), against the stored float32 map: Pearson r and max |diff|.
    Grad-CAM++'s alpha = g^2 / (2 g^2 + sum(A) g^3 + 1e-6) ~ 1 / (2 + sum(A) g) amplifies the
    gradients' float32 rounding where 2 + sum(A) g is near 0 (channels with sum(A) < 0, g > 0)."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    with cam_class(method)(model=wrapped64, target_layers=[model64.get_submodule(layer)]) as cam:
        g64 = np.asarray(cam(input_tensor=x64, targets=[SemanticSegmentationTarget(cls, mask)])[0],
                         dtype=np.float64)
    a, b = np.asarray(stored, dtype=np.float64).ravel(), g64.ravel()
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
    return {"reference_f64_r": r, "reference_f64_max_abs_diff": float(np.abs(a - b).max())}


def annotate_f64(spec, out, entry):
    """--annotate-f64: adds reference_f64_r / reference_f64_max_abs_diff to the gradient methods' cam
    entries of an existing manifest entry, against the .npy maps already in the folder; rewrites no
    array (a re-run on another machine gives float32 arrays that differ by rounding, ~1e-7 .. 6e-5)."""
    import torch

    folder = out / spec["name"]
    h, w = spec["size"]
    torch.manual_seed(spec["seed"])
    model = nontrivial(build(spec["build"]).eval(), spec["seed"], spec["size"])
    x = torch.from_numpy(np.load(folder / "input.npy"))
    seg = np.load(folder / "output.npy")[0].argmax(0)
    model64 = copy.deepcopy(model).double().eval()
    wrapped64, x64 = wrapper(model64), x.double()
    for c in entry["cams"]:
        if c["method"] not in GRADIENT:
            continue
        kind = c["region"]["kind"]
        if kind == "argmax":
            mask = np.float32(seg == c["class_index"])
        elif kind == "box":
            x0, y0, x1, y1 = c["region"]["box"]
            mask = np.zeros((h, w), np.float32)
            mask[y0:y1, x0:x1] = 1.0
        else:
            mask = np.ones((h, w), np.float32)
        assert int(mask.sum()) == c["mask_pixels"], c["file"]
        c.update(reference_f64(wrapped64, model64, x64, c["method"], c["layer"], c["class_index"], mask,
                               np.load(folder / c["file"])))
        print(f"  {c['file']}: r {c['reference_f64_r']}, max |diff| {c['reference_f64_max_abs_diff']:.3g}", flush=True)
    return entry


# ---------------------------------------------------------------- one case

def compute_case(spec, out, no_perturb=False):
    import torch
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    folder = out / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("cam__*"):
        old.unlink()
    h, w = spec["size"]
    torch.manual_seed(spec["seed"])
    model = nontrivial(build(spec["build"]).eval(), spec["seed"], spec["size"])
    x_np = load_image(spec["image"], spec["size"])
    x = torch.from_numpy(x_np)

    result, shapes = forward_as_returned(model, x, spec["layers"], spec["name"])
    out_keys = list(result.keys())
    logits = result["out"]
    np.save(folder / "input.npy", x_np)
    np.save(folder / "output.npy", logits.numpy().astype(np.float32))

    seg = logits[0].argmax(0).numpy()
    counts = np.bincount(seg.ravel(), minlength=logits.shape[1])
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    present = [[c, float(counts[c] / seg.size)] for c in order]
    big = [c for c, s in present if s >= 0.05]
    print(f"  classes present (share): {[(c, round(s, 3)) for c, s in present]}", flush=True)
    if len(big) < 3:
        raise SystemExit(f"{spec['name']}: only {len(big)} classes take >= 5 % of the pixels")
    classes = order[:2]

    case = {"name": spec["name"], "model": "tv:" + spec["build"], "builder": BUILDERS[spec["build"]],
            "seed": spec["seed"], "image": spec["image"], "input_size": [h, w], "preprocess": PREPROCESS,
            "num_classes": int(logits.shape[1]), "torch_outputs": out_keys,
            "layers": spec["layers"], "layer_shapes": {n: shapes[n] for n in spec["layers"]},
            "classes_present": present, "classes": classes,
            "logit_stats": {"min": float(logits.min()), "max": float(logits.max()), "std": float(logits.std())}}

    print("  exporting", flush=True)
    case["exports"] = export(model, x, folder, out_keys, spec.get("dynamo_names", True))
    check_exports(folder, case["exports"], x_np, {k: v.numpy() for k, v in result.items()})
    for e in case["exports"]:
        print(f"  {e['file']}: outputs {[o[0] for o in e['outputs']]}, {e['check']}", flush=True)

    wrapped = wrapper(model)
    # The same model and input in float64, for the gradient methods' reference_f64_* (see below).
    model64 = copy.deepcopy(model).double().eval()
    wrapped64, x64 = wrapper(model64), x.double()
    box = spec["box"]
    jobs = []
    for layer, methods, n in spec["maps"]:
        for method in methods:
            if no_perturb and method in PERTURB:
                continue
            for cls in (classes[:1] if method == "eigencam" else classes[:n]):
                jobs.append((method, layer, cls, "argmax"))
    for method, layer, region in spec["regions"]:
        if not (no_perturb and method in PERTURB):
            jobs.append((method, layer, classes[0], region))

    case["cams"], case["seconds"] = [], {}
    for method, layer, cls, region in jobs:
        if region == "argmax":
            mask = np.float32(seg == cls)
            reg = {"kind": "argmax"}
        elif region == "box":
            mask = np.zeros((h, w), np.float32)
            mask[box[1]:box[3], box[0]:box[2]] = 1.0
            reg = {"kind": "box", "box": box, "convention": "x0,y0,x1,y1 in input pixels; mask[y0:y1, x0:x1] = 1"}
        else:
            mask = np.ones((h, w), np.float32)
            reg = {"kind": "whole"}
        key = f"{method}__{layer}__{cls}" + ("" if region == "argmax" else f"__{region}")
        t = time.perf_counter()
        with cam_class(method)(model=wrapped, target_layers=[model.get_submodule(layer)]) as cam:
            grayscale = cam(input_tensor=x, targets=[SemanticSegmentationTarget(cls, mask)])[0]
        seconds = time.perf_counter() - t
        grayscale = np.asarray(grayscale, dtype=np.float32)
        assert grayscale.shape == (h, w), grayscale.shape
        file = f"cam__{key}.npy"
        np.save(folder / file, grayscale)
        case["seconds"][key] = seconds
        case["cams"].append({"file": file, "method": method, "layer": layer, "class_index": cls,
                             "region": reg, "layout": {"kind": "nchw"}, "seconds": seconds,
                             "target_score": float((logits[0, cls].numpy() * mask).sum()),
                             "mask_pixels": int(mask.sum()),
                             "max": float(grayscale.max()), "mean": float(grayscale.mean())})
        if method in GRADIENT:
            case["cams"][-1].update(reference_f64(wrapped64, model64, x64, method, layer, cls, mask, grayscale))
        if method == "gradcam":
            d = float(np.abs(own_gradcam(model, layer, x, cls, mask) - grayscale).max())
            case["cams"][-1]["own_gradcam_max_abs_diff"] = d
            if d > 1e-5:
                raise SystemExit(f"{key}: pytorch-grad-cam and the definition differ by {d:.2e}")
        if method == "ablationcam":
            d = float(np.abs(own_ablationcam(model, layer, x, cls, mask) - grayscale).max())
            case["cams"][-1]["own_ablationcam_max_abs_diff"] = d
            if d > 1e-4:
                raise SystemExit(f"{key}: pytorch-grad-cam and own_ablationcam differ by {d:.2e}")
        print(f"  {key}: {seconds:.2f} s, max {grayscale.max():.3f}, mean {grayscale.mean():.3f}", flush=True)
    case["methods"] = list(dict.fromkeys(c["method"] for c in case["cams"]))
    return case


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="output folder (tests/fixtures/seg, or e.g. /work/seg-big with --big)")
    p.add_argument("--big", action="store_true", help="the full-size torchvision models (out of the repository)")
    p.add_argument("--cases", help="comma-separated case names (default: all of the set)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-perturb", action="store_true", help="skip Score-CAM and Ablation-CAM (quick runs)")
    p.add_argument("--annotate-f64", action="store_true",
                   help="only add reference_f64_* to the existing manifest's gradient maps (no array rewritten)")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    specs = BIG if a.big else SMALL
    names = a.cases.split(",") if a.cases else [s["name"] for s in specs]
    unknown = set(names) - {s["name"] for s in specs}
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; known: {[s['name'] for s in specs]}")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else []
    for spec in specs:
        if spec["name"] not in names:
            continue
        print(f"{spec['name']}:", flush=True)
        if a.annotate_f64:
            old = [c for c in manifest if c["name"] == spec["name"]]
            if not old:
                raise SystemExit(f"--annotate-f64: {spec['name']} is not in {path}")
            case = annotate_f64(spec, a.out, old[0])
        else:
            case = compute_case(spec, a.out, a.no_perturb)
        manifest = [c for c in manifest if c["name"] != case["name"]] + [case]
    order = [s["name"] for s in specs]
    manifest.sort(key=lambda c: order.index(c["name"]) if c["name"] in order else len(order))
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{path}: {len(manifest)} cases")


if __name__ == "__main__":
    main()
