"""Deterministic synthetic COCO-format detection data whose classes are confusable in a graded way.

Distilling per-ROI class logits only helps when the teacher's non-target logits carry structure.
Classes here are the product of a shape and a colour, and both attributes come in families of
near neighbours (square ~ rounded square, red ~ orange, ...), so a weak model confuses classes
that differ in one attribute within a family and a strong model separates them. Clutter,
occlusion, shading and noise keep the classes from being separable by exact colour.

Layout written by `generate(root, config)`:
    root/meta.json                         generator version + config; decides reuse
    root/annotations/instances_<split>.json
    root/<split>/<image id>.png
"""
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

# Bump whenever rendering, the annotations or the file layout change, so stale datasets on disk are not
# reused. 2: instance masks (``segmentation`` polygons); images and boxes are those of version 1.
GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")

# shape -> family. Pairs within a family differ in a detail that survives ROI warping (corner
# rounding, top width, straight edges); aspect ratio would not, since ROIAlign resamples every box
# to a fixed grid.
SHAPE_FAMILIES = {
    "square": "quad",
    "rounded_square": "quad",
    "triangle": "wedge",
    "trapezoid": "wedge",
    "circle": "round",
    "hexagon": "round",
}
# colour -> (family, OpenCV hue in [0, 180)). Hues within a family are 9-13 units apart, only a
# few times the per-object hue jitter, so colour alone separates families easily but neighbours
# only with some care.
COLOURS = {
    "red": ("warm", 0),
    "orange": ("warm", 9),
    "cyan": ("cool", 97),
    "blue": ("cool", 110),
}
HUE_JITTER = 3.5
# Decoy shapes take hues far from every class hue (green, purple) or are nearly grey, so they
# are unambiguous background rather than label noise.
DECOY_HUES = (60, 148)


class ClassAttributes(NamedTuple):
    name: str
    shape: str
    shape_family: str
    colour: str
    colour_family: str


def class_attributes() -> List[ClassAttributes]:
    """Attributes of each class, in category-id order (index i is category id i + 1)."""
    return [
        ClassAttributes(f"{colour}_{shape}", shape, shape_family, colour, COLOURS[colour][0])
        for shape, shape_family in SHAPE_FAMILIES.items()
        for colour in COLOURS
    ]


def class_names() -> List[str]:
    return [a.name for a in class_attributes()]


def attribute_distance(a: ClassAttributes, b: ClassAttributes) -> int:
    """0 for the same class; per attribute +1 for a different member of the same family, +2 for
    a different family. Distance 1 means the two classes are attribute neighbours."""

    def one(x, y, family_x, family_y):
        return 0 if x == y else (1 if family_x == family_y else 2)

    return one(a.shape, b.shape, a.shape_family, b.shape_family) + one(
        a.colour, b.colour, a.colour_family, b.colour_family
    )


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    num_train: int = 2000
    num_val: int = 300
    num_test: int = 300
    image_size: int = 96
    min_objects: int = 1
    max_objects: int = 6
    # Object size: side of the shape's square frame before aspect jitter, as a fraction of
    # image_size, so that --image-size rescales the whole scene.
    min_object_size: float = 0.16
    max_object_size: float = 0.34
    # An object whose visible pixels are below this fraction of its full area is left in the
    # image unannotated: too little of it shows to name its shape.
    min_visible: float = 0.3
    max_decoys: int = 2
    max_lines: int = 4
    max_blobs: int = 3

    def __post_init__(self):
        for name in ("num_train", "num_val", "num_test", "min_objects", "max_decoys",
                     "max_lines", "max_blobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 32:
            raise ValueError(f"SyntheticConfig.image_size must be >= 32, got {self.image_size}")
        if self.max_objects < max(self.min_objects, 1):
            raise ValueError(
                f"SyntheticConfig.max_objects ({self.max_objects}) must be >= 1 and >= "
                f"min_objects ({self.min_objects})"
            )
        if not 0 < self.min_object_size <= self.max_object_size <= 0.5:
            raise ValueError(
                "SyntheticConfig needs 0 < min_object_size <= max_object_size <= 0.5 (fractions "
                f"of image_size), got {self.min_object_size}, {self.max_object_size}"
            )
        if self.min_object_size * self.image_size < 8:
            raise ValueError(
                f"SyntheticConfig: min_object_size {self.min_object_size} x image_size "
                f"{self.image_size} is under 8 px, too small to tell the shapes apart"
            )
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"SyntheticConfig.min_visible must be in (0, 1], got {self.min_visible}")

    def num_images(self, split: str) -> int:
        return getattr(self, f"num_{split}")


def default_root() -> Path:
    """$TOPKD_DATASETS/synthetic_shapes, with TOPKD_DATASETS defaulting to ./datasets, as
    $DETECTRON2_DATASETS does for Detectron2's builtin datasets."""
    return Path(os.environ.get("TOPKD_DATASETS", "datasets")) / "synthetic_shapes"


def json_path(root, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def image_root(root, split: str) -> Path:
    return Path(root) / split


# ---------------------------------------------------------------------------------------------
# Rendering


def _unit_polygons() -> Dict[str, np.ndarray]:
    """Each shape as a polygon in a [-1, 1]^2 frame, y pointing down."""
    circle = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    hexagon = np.linspace(0, 2 * np.pi, 6, endpoint=False) + np.pi / 6
    corner = 0.35  # rounding radius of the rounded square, large enough to show at 20 px
    arc = np.linspace(0, np.pi / 2, 8)
    rounded = []
    for cx, cy, start in ((1, 1, 0), (-1, 1, np.pi / 2), (-1, -1, np.pi), (1, -1, 1.5 * np.pi)):
        c = np.array([cx, cy]) * (1 - corner)
        rounded.append(c + corner * np.stack([np.cos(start + arc), np.sin(start + arc)], 1))
    polys = {
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "rounded_square": np.concatenate(rounded),
        "triangle": [(0, -1), (1, 1), (-1, 1)],
        "trapezoid": [(-0.45, -1), (0.45, -1), (1, 1), (-1, 1)],
        "circle": np.stack([np.cos(circle), np.sin(circle)], 1),
        "hexagon": np.stack([np.cos(hexagon), np.sin(hexagon)], 1),
    }
    return {k: np.asarray(v, dtype=np.float64) for k, v in polys.items()}


_POLYGONS = _unit_polygons()
_SUBPIXEL_BITS = 4  # fillPoly fixed-point precision, so small shapes keep their exact outline


def _hsv_to_bgr(h: float, s: float, v: float) -> np.ndarray:
    hsv = np.array([[[h % 180, s, v]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _shape_mask(rng, cfg: SyntheticConfig, shape: str) -> np.ndarray:
    """Boolean mask of a randomly sized, rotated and placed shape, fully inside the image."""
    size = rng.uniform(cfg.min_object_size, cfg.max_object_size) * cfg.image_size
    aspect = rng.uniform(0.85, 1.15)
    angle = np.deg2rad(rng.uniform(-20, 20))
    pts = _POLYGONS[shape] * (size / 2) * np.array([aspect, 1 / aspect])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T
    lo, hi = pts.min(0), pts.max(0)
    s = cfg.image_size
    pts = pts + rng.uniform(-lo, s - 1 - hi)
    mask = np.zeros((s, s), np.uint8)
    fixed = np.round(pts * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool)


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng) -> None:
    """Fill mask with colour under a linear shading ramp, as if lit from a random side."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    theta = rng.uniform(0, 2 * np.pi)
    t = xs * np.cos(theta) + ys * np.sin(theta)
    t = (t - t.min()) / max(np.ptp(t), 1.0)
    shade = rng.uniform(0.75, 0.9) + rng.uniform(0.15, 0.3) * t
    canvas[ys, xs] = colour[None, :] * shade[:, None].astype(np.float32)


def _background(rng, s: int) -> np.ndarray:
    """Muted low-frequency colour field plus grainy mid-frequency texture."""
    coarse = rng.uniform(40, 200, size=(4, 4, 3)).astype(np.float32)
    grey = coarse.mean(2, keepdims=True)
    # Pull towards grey so that the background never out-saturates the objects.
    coarse = grey + rng.uniform(0.1, 0.45) * (coarse - grey)
    base = cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC)
    grain = cv2.resize(rng.normal(0, 1, size=(s // 8, s // 8)).astype(np.float32), (s, s))
    return base + rng.uniform(5, 20) * grain[:, :, None]


def _line(canvas, owner, rng, s: int) -> None:
    p0, p1 = rng.integers(0, s, size=(2, 2))
    colour = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 255), rng.uniform(60, 255))
    width = int(rng.integers(1, 3))
    cv2.line(canvas, tuple(map(int, p0)), tuple(map(int, p1)), tuple(map(float, colour)), width)
    if owner is not None:
        cv2.line(owner, tuple(map(int, p0)), tuple(map(int, p1)), -1, width)


def _blob(canvas, owner, rng, s: int) -> None:
    mask = np.zeros((s, s), np.uint8)
    center = tuple(map(int, rng.integers(0, s, size=2)))
    axes = tuple(map(int, rng.integers(5, max(6, s // 6), size=2)))
    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask = mask.astype(bool)
    canvas[mask] = rng.uniform(60, 200) + rng.normal(0, 4, size=(mask.sum(), 1))
    if owner is not None:
        owner[mask] = -1


def _decoy_colour(rng) -> np.ndarray:
    if rng.random() < 0.5:
        return _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 40), rng.uniform(80, 230))
    hue = DECOY_HUES[rng.integers(len(DECOY_HUES))] + rng.uniform(-8, 8)
    return _hsv_to_bgr(hue, rng.uniform(120, 255), rng.uniform(110, 255))


def visible_polygons(visible: np.ndarray) -> List[List[float]]:
    """COCO ``segmentation`` polygons of an object's visible pixels: the outer contour of each of its
    visible parts through the pixel centres (``x + 0.5``). A part too thin for a polygon of three
    points is left out; an object with no such part gets its box outline, because Detectron2 drops an
    annotation whose every polygon has fewer than three points, even when it trains no masks."""
    contours, _ = cv2.findContours(visible.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [[round(float(v) + 0.5, 1) for v in c.reshape(-1)] for c in contours if len(c) >= 3]
    if polygons:
        return polygons
    ys, xs = np.nonzero(visible)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def render_image(cfg: SyntheticConfig, rng: np.random.Generator) -> Tuple[np.ndarray, List[dict]]:
    """One BGR uint8 image and its annotations (category_id, bbox xywh, area of visible pixels, and
    the polygons of the visible pixels as ``segmentation``)."""
    s = cfg.image_size
    attrs = class_attributes()
    canvas = _background(rng, s)
    # owner[y, x]: index of the object visible at that pixel, -1 for background and clutter.
    owner = np.full((s, s), -1, np.int16)

    for _ in range(rng.integers(0, cfg.max_lines + 1)):
        _line(canvas, None, rng, s)
    for _ in range(rng.integers(0, cfg.max_blobs + 1)):
        _blob(canvas, None, rng, s)

    num_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    num_decoys = int(rng.integers(0, cfg.max_decoys + 1))
    # Objects and decoys interleave in z-order, so decoys occlude objects and vice versa.
    is_decoy = rng.permutation(np.r_[np.zeros(num_objects, bool), np.ones(num_decoys, bool)])
    shapes = list(SHAPE_FAMILIES)
    objects = []  # (category_id, full area)
    for decoy in is_decoy:
        if decoy:
            mask = _shape_mask(rng, cfg, shapes[rng.integers(len(shapes))])
            _paint(canvas, mask, _decoy_colour(rng), rng)
            owner[mask] = -1
            continue
        cls = int(rng.integers(len(attrs)))
        hue = COLOURS[attrs[cls].colour][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)
        colour = _hsv_to_bgr(hue, rng.uniform(150, 255), rng.uniform(130, 255))
        mask = _shape_mask(rng, cfg, attrs[cls].shape)
        _paint(canvas, mask, colour, rng)
        owner[mask] = len(objects)
        objects.append((cls + 1, int(mask.sum())))

    # A little clutter on top: occluders that are not objects.
    for _ in range(rng.integers(0, cfg.max_lines // 2 + 1)):
        _line(canvas, owner, rng, s)
    if rng.random() < 0.3:
        _blob(canvas, owner, rng, s)

    # A per-image white-balance cast: exact colour is unreliable, colour relative to the scene is not.
    canvas *= rng.uniform(0.88, 1.12, size=3).astype(np.float32)
    canvas = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    canvas += rng.normal(0, rng.uniform(3, 10), size=canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)

    annotations = []
    for index, (category_id, full_area) in enumerate(objects):
        visible = owner == index
        ys, xs = np.nonzero(visible)
        if len(ys) < cfg.min_visible * full_area:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        annotations.append({"category_id": category_id, "bbox": bbox, "area": int(len(ys)),
                            "segmentation": visible_polygons(visible)})
    return image, annotations


# ---------------------------------------------------------------------------------------------
# Writing to disk


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One stream per (split, image): splits never share a stream, and any image can be rendered
    # on its own, independent of the split sizes.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def _write_split(root: Path, cfg: SyntheticConfig, split: str, progress: bool) -> int:
    out_dir = image_root(root, split)
    out_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in tqdm(range(cfg.num_images(split)), desc=f"synthetic {split}", disable=not progress,
                      leave=False):
        image, anns = render_image(cfg, _image_rng(cfg.seed, split, index))
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        path = out_dir / file_name
        if not cv2.imwrite(str(path), image):
            raise OSError(f"cv2.imwrite failed for {path}")
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0],
                       "width": image.shape[1]})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **ann})
    categories = [{"id": i + 1, "name": a.name, "supercategory": a.shape}
                  for i, a in enumerate(class_attributes())]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    json_path(root, split).write_text(json.dumps(coco))
    return len(annotations)


def _meta(cfg: SyntheticConfig) -> dict:
    return {"version": GENERATOR_VERSION, "config": asdict(cfg)}


def _read_meta(root: Path) -> Optional[dict]:
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return {"version": meta.get("version"), "config": meta.get("config")}


def _mismatch(root: Path, cfg: SyntheticConfig) -> str:
    """Why the dataset at root is not the one cfg describes ('' when it is)."""
    meta = _read_meta(root)
    if meta is None:
        return f"{root / 'meta.json'} is missing or unreadable"
    want = _meta(cfg)
    if meta["version"] != want["version"]:
        return f"generator version {meta['version']} on disk, {want['version']} requested"
    have = meta["config"] or {}
    diffs = [f"{k}: {have.get(k)!r} on disk, {v!r} requested"
             for k, v in want["config"].items() if have.get(k) != v]
    return "; ".join(diffs)


def generate(root, config: Optional[SyntheticConfig] = None, *, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Write the dataset described by config under root and return root.

    An existing root whose meta.json matches config is reused as is. An existing root that does
    not match raises FileExistsError naming the differing parameters, unless overwrite=True, in
    which case it is replaced: silently replacing data another run may be reading, or silently
    training on data that differs from what was asked for, are both worse than stopping.
    The dataset is built in a sibling temp dir and renamed into place, so root is never partial.
    """
    cfg = config or SyntheticConfig()
    root = Path(root).absolute()
    if root.exists():
        reason = _mismatch(root, cfg)
        if not reason:
            if progress:
                print(f"synthetic dataset: reusing {root}")
            return root
        if not overwrite:
            raise FileExistsError(
                f"{root} exists but does not match the requested synthetic dataset ({reason}); "
                f"regenerate it with tools/make_synthetic_coco.py --root {root} --overwrite and the requested "
                "parameters (overwrite=True in Python), or choose another root"
            )

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "annotations").mkdir(parents=True)
        counts = {split: _write_split(tmp, cfg, split, progress) for split in SPLITS}
        meta = {**_meta(cfg), "num_annotations": counts, "classes": class_names()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if root.exists():  # overwrite=True: move the old one aside first, rename is atomic
            stale = root.parent / f".{root.name}.stale-{uuid.uuid4().hex[:8]}"
            os.rename(root, stale)
            shutil.rmtree(stale)
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished the same dataset first; theirs is as good as ours.
            if _mismatch(root, cfg):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        n = {split: cfg.num_images(split) for split in SPLITS}
        print(f"synthetic dataset: wrote {root} (images {n}, annotations {counts})")
    return root

