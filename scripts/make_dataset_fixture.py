"""Builds tests/fixtures/dataset/: a tiny ImageFolder tree, a CSV with boxes, a VOC XML and a
mask, from the test photos in tests/fixtures/images. Run from the repository root:

    python3 scripts/make_dataset_fixture.py     # needs Pillow

The files are committed; this script only says how they were made.
"""
from pathlib import Path

from PIL import Image, ImageDraw

IMAGES = Path("tests/fixtures/images")
OUT = Path("tests/fixtures/dataset")
ROOT = OUT / "folder"


def jpeg(src, dst, size=None):
    im = Image.open(src if isinstance(src, Path) else IMAGES / src).convert("RGB")
    if size:
        im = im.resize(size, Image.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, quality=85)
    return im.size


def voc(path, filename, size, boxes):
    objects = "".join(
        f"  <object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>\n"
        for name, (x0, y0, x1, y1) in boxes
    )
    path.write_text(
        f"<annotation>\n  <filename>{filename}</filename>\n"
        f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>\n"
        f"{objects}</annotation>\n"
    )


chelsea = jpeg("chelsea.png", ROOT / "tabby" / "chelsea.jpg")
jpeg(Path("assets/both.png"), ROOT / "tabby" / "both.jpg")
coffee = jpeg("coffee.png", ROOT / "espresso" / "coffee.jpg", (300, 200))
jpeg("grace_hopper.jpg", ROOT / "espresso" / "hopper.jpg", (256, 300))
# A file that claims to be a JPEG and is not: an error row, never a stop.
(ROOT / "espresso" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
(ROOT / "espresso" / "notes.txt").write_text("not an image: listed as skipped\n")
jpeg("chelsea.png", ROOT / ".ipynb_checkpoints" / "chelsea-checkpoint.jpg", (64, 48))

# VOC boxes are 1-based and inclusive.
voc(ROOT / "tabby" / "chelsea.xml", "chelsea.jpg", chelsea, [("tabby", (20, 1, 400, 300))])

# The espresso cup of coffee.jpg (300×200) as a mask.
masks = OUT / "masks"
masks.mkdir(parents=True, exist_ok=True)
mask = Image.new("L", coffee, 0)
ImageDraw.Draw(mask).ellipse((85, 8, 205, 150), fill=255)
mask.save(masks / "coffee.png")

(OUT / "list.csv").write_text(
    "path,label,x0,y0,x1,y1\n"
    "folder/tabby/chelsea.jpg,tabby,19,0,400,300\n"
    "folder/espresso/coffee.jpg,espresso,85,8,205,150\n"
    "folder/espresso/coffee.jpg,espresso,160,120,205,165\n"
    "folder/tabby/both.jpg,tabby,,,,\n"
)
