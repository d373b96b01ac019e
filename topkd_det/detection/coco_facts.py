"""What a COCO instances json holds, read once per file: its class names, and its images and
annotations counted the way Detectron2 will treat them. A json Detectron2 would fail on (or read
wrongly) is refused here in one line naming the file, the field and an example id.

Which boxes Detectron2 drops or moves, on both builds (``load_coco_json``, ``DatasetMapper``,
``transform_instance_annotations``, ``filter_empty_instances`` in ``detectron2/data`` and fvcore's
``Transform.apply_box``), checked against Detectron2 itself in tests/test_own_coco_data.py:

- an annotation whose ``segmentation`` is a polygon list with no polygon of three points is skipped
  when the json is loaded, masks trained or not (``invalid polygon``);
- ``iscrowd`` annotations are loaded but never trained on (counted as crowd);
- every other box is turned into corners, which the augmentations (resize, flip) move; the box is
  then the min/max of its corners, clipped to the image, and dropped if its width or height is not
  above 1e-5 px. So a box of zero width or height is dropped (``zero width or height``), as is one with
  no area inside the image (``outside the image``); a box only partly outside is clipped and kept
  (counted as clipped). A box of negative width or height is *not* dropped: its corners span
  [x + w, x], so Detectron2 trains that mirrored box (``negative width or height``, counted as
  misplaced). Resizing and flipping change none of these verdicts, so they are decided on the json.
"""
import json
import os
from dataclasses import dataclass, field
from itertools import repeat
from numbers import Real
from typing import Dict, NamedTuple, Tuple

import numpy as np

from ..config_io import ConfigError

ZERO_SIZE = "zero width or height"
OUTSIDE = "outside the image"
INVALID_POLYGON = "invalid polygon (fewer than 3 points)"
DROP_REASONS = (ZERO_SIZE, OUTSIDE, INVALID_POLYGON)
NEGATIVE_SIZE = "negative width or height, trained as the mirrored box"


class Tally(NamedTuple):
    count: int
    example: object  # the id of the first annotation (or image) counted, None when count is 0


@dataclass(frozen=True)
class CocoFacts:
    json_file: str
    categories: Tuple[str, ...]  # names in the order of their ids: Detectron2's contiguous class order
    num_images: int
    num_annotations: int
    file_names: Tuple[str, ...]  # of the images, as the json gives them (relative to the image root)
    crowd: Tally
    dropped: Dict[str, Tally]  # reason (DROP_REASONS) -> boxes Detectron2 drops for it
    misplaced: Tally  # negative width or height: Detectron2 trains the box its corners span instead
    clipped: Tally  # partly outside the image: clipped and kept
    without_segmentation: Tally
    without_keypoints: Tally
    images_without_usable: int  # images with no trainable box, which Detectron2 leaves out of training
    usable: int = field(init=False)  # annotations a model trains on (the misplaced ones included)

    def __post_init__(self):
        object.__setattr__(self, "usable", self.num_annotations - self.crowd.count - self.num_dropped)

    @property
    def num_dropped(self) -> int:
        return sum(t.count for t in self.dropped.values())

    def bad_boxes(self) -> Dict[str, Tally]:
        """The boxes Detectron2 drops or misplaces, by reason (those with a count only)."""
        reasons = {**self.dropped, NEGATIVE_SIZE: self.misplaced}
        return {reason: tally for reason, tally in reasons.items() if tally.count}


def _tally(mask: np.ndarray, ids: list) -> Tally:
    count = int(mask.sum())
    return Tally(count, ids[int(mask.argmax())] if count else None)


def _fail(key: str, json_file: str, what: str) -> ConfigError:
    return ConfigError(f"{key}: {json_file}: {what}")


def _load(json_file: str, key: str) -> dict:
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        what = "is empty" if not err.doc.strip() else (
            f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}, char {err.pos} of "
            f"{len(err.doc)}; a truncated file ends early)")
        raise ConfigError(f"{key}: {json_file} {what}; re-export or re-download the annotations") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: {json_file} cannot be read ({err})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ConfigError(f"{key}: {json_file} is not a COCO instances file: it lacks {', '.join(missing)}")
    return data


def _categories(data: dict, key: str, json_file: str) -> Dict[object, int]:
    categories = data["categories"]
    if not categories or not all(isinstance(c, dict) and "id" in c and "name" in c for c in categories):
        raise ConfigError(f"{key}: {json_file} needs a non-empty 'categories' list of {{'id', 'name'}} entries")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise _fail(key, json_file, f"category id {duplicate!r} appears twice in 'categories'")
    return {c["id"]: c for c in categories}


def _positive(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value > 0


def _images(data: dict, key: str, json_file: str) -> Dict[object, Tuple[float, float]]:
    """image id -> (width, height); every field Detectron2 reads of an image is there."""
    sizes = {}
    for position, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise _fail(key, json_file, f"'images'[{position}] has no 'id'")
        image_id = image["id"]
        for name in ("file_name", "width", "height"):
            if name not in image:
                raise _fail(key, json_file, f"image id {image_id!r} has no '{name}' (Detectron2 reads file_name, "
                                            "width and height of every image; re-export the json with them)")
        if not (_positive(image["width"]) and _positive(image["height"])):
            raise _fail(key, json_file, f"image id {image_id!r} has width {image['width']!r} and height "
                                        f"{image['height']!r}; both must be positive numbers")
        if image_id in sizes:
            raise _fail(key, json_file, f"image id {image_id!r} appears twice in 'images'")
        sizes[image_id] = (image["width"], image["height"])
    return sizes


def _bbox_problem(ann: dict) -> bool:
    bbox = ann.get("bbox")
    return not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox))


def _has_valid_polygon(segmentation) -> bool:
    return any(len(polygon) % 2 == 0 and len(polygon) >= 6 for polygon in segmentation)


def _first(anns: list, problem) -> dict:
    return next(ann for ann in anns if problem(ann))


class _Columns(NamedTuple):
    """The annotations' fields, one list each."""

    ids: list
    image_ids: list
    category_ids: list
    crowd: list
    ignore: list
    boxes: list
    segmentations: list
    keypoints: list


def _columns(anns: list, key: str, json_file: str) -> _Columns:
    def column(name, default=None):  # map() runs dict.get in C: several times faster than a comprehension
        return list(map(dict.get, anns, repeat(name), repeat(default)))

    try:
        ids = column("id")
    except TypeError:  # an entry that is not a dict
        ids = [None]
    if None in ids:
        position = next(i for i, ann in enumerate(anns) if not isinstance(ann, dict) or ann.get("id") is None)
        raise _fail(key, json_file, f"'annotations'[{position}] has no 'id'")
    return _Columns(ids, column("image_id"), column("category_id"), column("iscrowd", 0), column("ignore", 0),
                    column("bbox"), column("segmentation"), column("keypoints"))


def _check_annotations(anns: list, columns: _Columns, image_index: dict, categories: dict, key: str,
                       json_file: str) -> Tuple[np.ndarray, np.ndarray]:
    """Refuse what Detectron2 would fail on or misread; return each annotation's image index and the
    boxes as an (N, 4) float array. Each field is checked for all annotations at once (set and array
    operations: COCO has 860k); the first offending annotation is looked up only to name it."""
    if len(set(columns.ids)) != len(columns.ids):
        seen = set()
        duplicate = next(i for i in columns.ids if i in seen or seen.add(i))
        raise _fail(key, json_file, f"annotation id {duplicate!r} appears twice (Detectron2 needs unique ids)")
    on_image = np.array(list(map(image_index.get, columns.image_ids, repeat(-1))), np.int64)
    if (on_image < 0).any():
        ann = anns[int((on_image < 0).argmax())]
        raise _fail(key, json_file, f"annotation id {ann['id']!r} has image_id {ann.get('image_id')!r}, which "
                                    "'images' does not list")
    if not set(columns.category_ids) <= categories.keys():
        ann = _first(anns, lambda a: a.get("category_id") not in categories)
        known = ", ".join(map(str, list(categories)[:10])) + (", ..." if len(categories) > 10 else "")
        raise _fail(key, json_file, f"annotation id {ann['id']!r} has category_id {ann.get('category_id')!r}, "
                                    f"which 'categories' does not list (its ids: {known})")
    if any(columns.ignore):
        ann = _first(anns, lambda a: a.get("ignore", 0))
        raise _fail(key, json_file, f"annotation id {ann['id']!r} has ignore={ann['ignore']!r}, which Detectron2 "
                                    "does not support: remove those annotations or mark them iscrowd")
    try:
        boxes = np.asarray(columns.boxes)
    except ValueError:  # lists of other lengths
        boxes = np.zeros(0)
    if anns and not (boxes.shape == (len(anns), 4) and boxes.dtype.kind in "iuf"):
        ann = _first(anns, _bbox_problem)
        raise _fail(key, json_file, f"annotation id {ann['id']!r} has bbox {ann.get('bbox')!r}; every annotation "
                                    "needs 'bbox': [x, y, width, height] (numbers)")
    return on_image, boxes.astype(np.float64).reshape(-1, 4)


def _invalid_polygons(segmentations: list) -> np.ndarray:
    """Polygon lists with no polygon of three points; the first polygon is tested inline, as it is
    nearly always the only one and valid."""
    return np.array([isinstance(s, list) and bool(s) and not (len(s[0]) >= 6 and len(s[0]) % 2 == 0)
                     and not _has_valid_polygon(s) for s in segmentations], bool)


def _read(json_file: str, key: str) -> CocoFacts:
    data = _load(json_file, key)
    categories = _categories(data, key, json_file)
    sizes = _images(data, key, json_file)
    anns = data["annotations"]
    columns = _columns(anns, key, json_file)
    on_image, boxes = _check_annotations(anns, columns, {image_id: i for i, image_id in enumerate(sizes)},
                                         categories, key, json_file)
    ids = columns.ids
    # Detectron2 skips these when it loads the json, whatever the box, crowd or not.
    invalid = _invalid_polygons(columns.segmentations)
    crowd = ~invalid & np.array(columns.crowd, bool).reshape(-1)
    trained = ~invalid & ~crowd
    width, height = np.array(list(sizes.values()), np.float64).reshape(-1, 2)[on_image].T
    x, y, w, h = boxes.T
    # The span of the box's corners, which is what Detectron2's transforms keep.
    x0, x1, y0, y1 = np.minimum(x, x + w), np.maximum(x, x + w), np.minimum(y, y + h), np.maximum(y, y + h)
    zero = trained & ((w == 0) | (h == 0))
    outside = trained & ~zero & ((x0 >= width) | (y0 >= height) | (x1 <= 0) | (y1 <= 0))
    kept = trained & ~zero & ~outside
    negative = kept & ((w < 0) | (h < 0))
    clipped = kept & ~negative & ((x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height))
    names = tuple(c["name"] for _, c in sorted(categories.items(), key=lambda item: item[0]))
    return CocoFacts(
        json_file=json_file, categories=names, num_images=len(sizes), num_annotations=len(anns),
        file_names=tuple(image["file_name"] for image in data["images"]), crowd=_tally(crowd, ids),
        dropped={ZERO_SIZE: _tally(zero, ids), OUTSIDE: _tally(outside, ids), INVALID_POLYGON: _tally(invalid, ids)},
        misplaced=_tally(negative, ids), clipped=_tally(clipped, ids),
        without_segmentation=_tally(np.array([not s for s in columns.segmentations], bool), ids),
        without_keypoints=_tally(np.array([not k for k in columns.keypoints], bool), ids),
        images_without_usable=len(sizes) - len(np.unique(on_image[kept])))


_CACHE: Dict[Tuple[str, int, int], CocoFacts] = {}
_CACHED_FILES = 16


def read_coco_facts(json_file: str, key: str) -> CocoFacts:
    """The facts of a COCO instances json, parsed once per file version (path, size, modification
    time), so that registering a dataset and checking it share one read. ``key`` names where the file
    was given, for errors."""
    json_file = os.path.abspath(json_file)
    try:
        stat = os.stat(json_file)
    except OSError as err:
        raise ConfigError(f"{key}: {json_file} cannot be read ({err.strerror})") from None
    version = (json_file, stat.st_size, stat.st_mtime_ns)
    if version not in _CACHE:
        if len(_CACHE) >= _CACHED_FILES:
            _CACHE.pop(next(iter(_CACHE)))
        try:
            _CACHE[version] = _read(json_file, key)
        except TypeError as err:  # e.g. a list where an id belongs: unhashable, or not comparable
            raise _fail(key, json_file, f"a field holds a value of the wrong type ({err}); ids are numbers or "
                                        "strings, sizes and boxes numbers") from None
    return _CACHE[version]
