"""Regenerates camscope's reference fixtures (SPEC §6) with pytorch-grad-cam 1.5.7.

Setup, once (CPU is enough):
    python3 -m venv /tmp/fixenv && /tmp/fixenv/bin/pip install -r scripts/requirements-fixtures.txt

Run from the repository root:
    /tmp/fixenv/bin/python scripts/make_fixtures.py --out ../shared/fixtures

It writes two things:
- the big set, in --out (default: $CAMSCOPE_FIXTURES, else ../shared/fixtures, where the tests look):
  `manifest.json`, one folder per case with `input.npy` (the exact NCHW f32 input), `logits.npy`
  and one `cam__METHOD__LAYER__CLASS.npy` (S×S f32) per map, and the ResNet-18 weights
  `resnet18_seed0.safetensors` / `.pth` (seeded random, stored as F16, computed in f32);
- the repository's compact copy of the default model's cases, in --repo-copy (default
  tests/fixtures): the same inputs and logits, the maps as 16-bit grey PNG holding round(65535·v)
  (quantisation error ≤ 7.7e-6), and a `manifest.json` naming the PNGs. `cargo test` runs on it
  without the big set.

Cases (CASES below): `lite0-both` (EfficientNet-Lite0 from models/efficientnet_lite0.safetensors,
rebuilt in PyTorch by scripts/reference_timings.py, on assets/both.png; nine gradient and
activation methods), `lite0-both-perturb` (Score-CAM and Ablation-CAM: minutes), and
`resnet18-random` (torchvision ResNet-18 with seeded random weights on a seeded random input).
Score-CAM and Ablation-CAM at `_conv_head` of Lite0 take minutes each (SPEC §8: 183 s and 40 s on 2
threads); on a busy 2-core machine the whole run took about 20 minutes. It reproduced the shipped
set: the same input tensors and ResNet-18 files byte for byte, logits within 2e-6, maps within 1.5e-5.

To add a case, add an entry to CASES and run with `--cases NAME`: the case is computed and merged
into the existing manifest; the others are kept. `--compare DIR` checks what was computed against
an existing set (for instance the shipped one) and fails if any array differs beyond round-off.
`--compact-from DIR` only rewrites the repository's copy from an existing big set (needs numpy
alone).
"""

import argparse
import contextlib
import json
import os
import sys
import time
import zlib
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

LITE0_STAGES = ["_conv_stem"] + [f"_blocks.{i}" for i in range(16)] + ["_conv_head"]
RESNET18_STAGES = ["maxpool"] + [f"layer{l}.{b}" for l in range(1, 5) for b in range(2)]
GRADIENT_METHODS = ["gradcam", "hirescam", "gradcam-elementwise", "gradcam++", "xgradcam", "layercam",
                    "eigencam", "eigengradcam", "fullgrad"]

CASES = [
    {"name": "lite0-both", "model": "efficientnet-lite0", "image": "both.png",
     "methods": GRADIENT_METHODS, "layers": ["_conv_head", "_blocks.10"], "classes": [243, 281]},
    {"name": "lite0-both-perturb", "model": "efficientnet-lite0", "image": "both.png",
     "methods": ["scorecam", "ablationcam"], "layers": ["_conv_head"], "classes": [243]},
    {"name": "resnet18-random", "model": "resnet18@0", "seed": 1,
     "methods": ["gradcam", "gradcam++", "layercam", "scorecam"], "layers": ["layer4.1", "layer3.1"],
     "classes": [7]},
]

# The cases the repository carries in compact form (the default model's).
REPO_CASES = ["lite0-both", "lite0-both-perturb"]


# ---------------------------------------------------------------- compact maps (numpy only)

def png16(path, values):
    """Writes an S×S map in [0, 1] as a 16-bit grey PNG of round(65535·v); returns the error."""
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all() or m.min() < -1e-6 or m.max() > 1 + 1e-6:
        raise SystemExit(f"{path}: not a finite 2-D map in [0, 1]")
    q = np.round(np.clip(m, 0.0, 1.0) * 65535.0).astype(np.uint16)
    error = float(np.abs(q / 65535.0 - m).max())
    assert error <= 1e-4, (path, error)
    h, w = q.shape
    rows = q.astype(">u2").view(np.uint8).reshape(h, 2 * w).astype(np.int16)
    # Filter "Up" on every row: smooth maps compress to a third of the raw size.
    up = (rows - np.vstack([np.zeros((1, 2 * w), np.int16), rows[:-1]])) & 0xFF
    raw = b"".join(b"\x02" + r.astype(np.uint8).tobytes() for r in up)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return error


def write_compact(big, repo_copy, names):
    """The repository's copy of the cases `names` of the big set in `big`."""
    manifest = json.loads((big / "manifest.json").read_text())
    repo_copy.mkdir(parents=True, exist_ok=True)
    kept = []
    worst = 0.0
    for case in manifest:
        if case["name"] not in names:
            continue
        src, dst = big / case["name"], repo_copy / case["name"]
        dst.mkdir(exist_ok=True)
        for old in dst.glob("cam__*"):
            old.unlink()
        for f in ["input.npy", "logits.npy"]:
            (dst / f).write_bytes((src / f).read_bytes())
        case = dict(case)
        case["cams"] = [dict(c) for c in case["cams"]]
        for c in case["cams"]:
            png = c["file"][: -len(".npy")] + ".png"
            worst = max(worst, png16(dst / png, np.load(src / c["file"])))
            c["file"] = png
        kept.append(case)
    missing = set(names) - {c["name"] for c in kept}
    if missing:
        raise SystemExit(f"{big}/manifest.json lacks {sorted(missing)}")
    (repo_copy / "manifest.json").write_text(json.dumps(kept, indent=1) + "\n")
    print(f"{repo_copy}: {len(kept)} cases, maps as 16-bit PNG (worst quantisation error {worst:.2e})")


# ---------------------------------------------------------------- the reference (torch)

def lite0_model():
    import torch
    from safetensors.torch import load_file
    sys.path.insert(0, str(ROOT / "scripts"))
    from reference_timings import Lite0

    model = Lite0()
    state = load_file(str(ROOT / "models" / "efficientnet_lite0.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The only keys not in the file are the aliases `stem.*` / `head.*` of the same modules.
    assert not unexpected and all(m.split(".")[0] in ("stem", "head") for m in missing), missing
    model.eval()
    stages = {"_conv_stem": model.stem, "_conv_head": model.head}
    stages.update({f"_blocks.{i}": b for i, b in enumerate(model._blocks)})
    return model, {name: stages[name] for name in LITE0_STAGES}, torch.float32


def lite0_input(image):
    """models/README preprocessing: shorter side to round(224/0.875) = 256 with PIL's bilinear
    filter, centre crop 224 at round((w-224)/2), x = (pixel - 127) / 128, NCHW."""
    import torch
    from PIL import Image

    img = Image.open(image)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    img = img.convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    size = (256, round(h * scale)) if w <= h else (round(w * scale), 256)
    img = img.resize(size, Image.BILINEAR)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


def resnet18_weights(out, seed):
    """torchvision ResNet-18: torchvision's own initialisation after torch.manual_seed(seed), then
    non-trivial BatchNorm statistics from torch.manual_seed(seed + 1) (per BatchNorm, in module
    order: running_mean ~ N(0, 0.1), running_var ~ U(0.75, 1.25), weight ~ U(0.75, 1.25),
    bias ~ N(0, 0.1)), stored as F16. Written to `out` as .safetensors and .pth."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.75, 1.25)
                m.weight.uniform_(0.75, 1.25)
                m.bias.normal_(0, 0.1)
    state = {k: v.half().contiguous() for k, v in model.state_dict().items() if "num_batches" not in k}
    save_file(state, str(out / f"resnet18_seed{seed}.safetensors"))
    torch.save(state, out / f"resnet18_seed{seed}.pth")
    return state


def resnet18_model(state):
    import torch
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.eval()
    return model, {name: model.get_submodule(name) for name in RESNET18_STAGES}, torch.float32


@contextlib.contextmanager
def aliases_hidden(model):
    """Lite0's `stem` and `head` are second names of modules it already has (the stages
    pytorch-grad-cam hooks). FullGrad walks `_modules` and would hook their BatchNorms twice; while
    it is built, they are plain attributes instead, so that each BatchNorm is seen once."""
    aliases = {k: model._modules.pop(k) for k in ("stem", "head") if k in model._modules}
    for name, module in aliases.items():
        object.__setattr__(model, name, module)
    try:
        yield
    finally:
        for name, module in aliases.items():
            del model.__dict__[name]
            model._modules[name] = module


def cam_class(method):
    import pytorch_grad_cam as g

    return {"gradcam": g.GradCAM, "hirescam": g.HiResCAM, "gradcam-elementwise": g.GradCAMElementWise,
            "gradcam++": g.GradCAMPlusPlus, "xgradcam": g.XGradCAM, "layercam": g.LayerCAM,
            "eigencam": g.EigenCAM, "eigengradcam": g.EigenGradCAM, "fullgrad": g.FullGrad,
            "scorecam": g.ScoreCAM, "ablationcam": g.AblationCAM}[method]


def compute_case(spec, out, weights):
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if spec["model"] == "efficientnet-lite0":
        model, stages, _ = lite0_model()
        x = lite0_input(ROOT / "assets" / spec["image"])
    elif spec["model"] == "resnet18@0":
        model, stages, _ = resnet18_model(weights())
        torch.manual_seed(spec["seed"])
        x = torch.randn(1, 3, 224, 224)
    else:
        raise SystemExit(f"{spec['name']}: unknown model {spec['model']}")

    shapes = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, list(o.shape)))
             for n, m in stages.items()]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    case = {k: v for k, v in spec.items()}
    case["stages"] = [[n, shapes[n]] for n in stages]
    case["top5"] = [int(i) for i in torch.argsort(logits[0], descending=True)[:5]]
    case["cams"], case["seconds"] = [], {}

    folder = out / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "input.npy", x.numpy().astype(np.float32))
    np.save(folder / "logits.npy", logits.numpy().astype(np.float32))
    for method in spec["methods"]:
        for layer in spec["layers"]:
            for cls in spec["classes"]:
                key = f"{method}__{layer}__{cls}"
                t = time.perf_counter()
                hide = aliases_hidden(model) if method == "fullgrad" else contextlib.nullcontext()
                with hide, cam_class(method)(model=model, target_layers=[stages[layer]]) as cam:
                    grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])[0]
                case["seconds"][key] = time.perf_counter() - t
                file = f"cam__{key}.npy"
                np.save(folder / file, grayscale.astype(np.float32))
                case["cams"].append({"file": file, "method": method, "layer": layer, "class_index": cls})
                print(f"  {spec['name']} {key}: {case['seconds'][key]:.2f} s", flush=True)
    return case


def compare(out, ref, names):
    """Every array of the cases `names` in `out` against those in `ref`; returns the failures."""
    theirs = {c["name"]: c for c in json.loads((ref / "manifest.json").read_text())}
    failures = 0
    for name in names:
        if name not in theirs:
            print(f"compare: {name} is not in {ref}")
            continue
        a, b = out / name, ref / name
        same_input = np.array_equal(np.load(a / "input.npy"), np.load(b / "input.npy"))
        dl = float(np.abs(np.load(a / "logits.npy") - np.load(b / "logits.npy")).max())
        print(f"compare {name}: input {'identical' if same_input else 'DIFFERS'}, logits max |Δ| {dl:.2e}")
        failures += (not same_input) + (dl > 1e-4)
        for c in theirs[name]["cams"]:
            ours = np.load(a / c["file"]).ravel().astype(np.float64)
            ref_map = np.load(b / c["file"]).ravel().astype(np.float64)
            d = float(np.abs(ours - ref_map).max())
            r = float(np.corrcoef(ours, ref_map)[0, 1]) if ours.std() > 0 and ref_map.std() > 0 else float("nan")
            ok = d <= 1e-3 or (c["method"].startswith("eigen") and abs(r) >= 0.9999)
            failures += not ok
            print(f"  {c['file']}: max |Δ| {d:.2e}, r {r:.6f}{'' if ok else '  <-- differs'}")
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.environ.get("CAMSCOPE_FIXTURES") or str(ROOT.parent / "shared" / "fixtures")
    p.add_argument("--out", type=Path, default=Path(default_out), help="the big set's folder")
    p.add_argument("--repo-copy", type=Path, default=ROOT / "tests" / "fixtures",
                   help="where the repository's compact copy goes")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare", type=Path, help="an existing set to check the results against")
    p.add_argument("--compact-from", type=Path,
                   help="only rewrite the repository's copy from this existing big set")
    a = p.parse_args()

    if a.compact_from:
        write_compact(a.compact_from, a.repo_copy, REPO_CASES)
        return

    import torch

    torch.set_num_threads(a.threads)
    names = a.cases.split(",") if a.cases else [c["name"] for c in CASES]
    unknown = set(names) - {c["name"] for c in CASES}
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; known: {[c['name'] for c in CASES]}")
    a.out.mkdir(parents=True, exist_ok=True)
    state = {}

    def weights():
        if not state:
            state.update(resnet18_weights(a.out, 0))
        return state

    manifest_path = a.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else []
    for spec in CASES:
        if spec["name"] not in names:
            continue
        print(f"{spec['name']}:", flush=True)
        case = compute_case(spec, a.out, weights)
        manifest = [c for c in manifest if c["name"] != case["name"]]
        manifest.append(case)
    order = [c["name"] for c in CASES]
    manifest.sort(key=lambda c: order.index(c["name"]) if c["name"] in order else len(order))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{manifest_path}: {len(manifest)} cases")

    if set(REPO_CASES) <= {c["name"] for c in manifest}:
        write_compact(a.out, a.repo_copy, REPO_CASES)
    else:
        print(f"{a.repo_copy} left as it is: {manifest_path} lacks some of {REPO_CASES}")
    if a.compare and compare(a.out, a.compare, names):
        raise SystemExit("differences from the compared set (above)")


if __name__ == "__main__":
    main()
