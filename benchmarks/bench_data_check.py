#!/usr/bin/env python
"""Cost of the dataset check at COCO-2017 size (docs/data_checks.md), measured side by side with what
reading the same json costs anyway.

Writes a synthetic COCO instances json of the train2017 size (118,287 images, 860,001 boxes with
polygon masks, 80 categories of non-contiguous ids) and one empty file per image into --root, then
times, each once in this process:

- ``json.load`` of the file alone: what registering the dataset and Detectron2's loader pay anyway;
- ``coco_facts.read_coco_facts``: the parse plus every count the check makes (the check reads the json
  this once; registration and the check share it);
- ``data_check.missing_files``: the image files, one directory listing per folder;
- ``detectron2 load_coco_json`` (with --detectron2): what the training data loader itself takes.

    nice -n 15 python benchmarks/bench_data_check.py --root /tmp/coco_check
"""
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.detection.coco_facts import read_coco_facts  # noqa: E402
from topkd_det.detection.data_check import missing_files  # noqa: E402

# COCO's 80 category ids run from 1 to 90 with gaps.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _polygon(rng: random.Random, x: float, y: float, w: float, h: float) -> list:
    points = rng.randint(8, 30)
    return [round(v, 2) for _ in range(points) for v in (x + rng.random() * w, y + rng.random() * h)]


def write_coco(root: Path, num_images: int, num_boxes: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    images = [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": 640, "height": 480}
              for i in range(num_images)]
    annotations = []
    for a in range(num_boxes):
        w, h = rng.uniform(2, 300), rng.uniform(2, 300)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        annotations.append({"id": a + 1, "image_id": rng.randint(1, num_images), "category_id": rng.choice(COCO_IDS),
                            "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": round(w * h, 2),
                            "iscrowd": int(rng.random() < 0.01), "segmentation": [_polygon(rng, x, y, w, h)]})
    categories = [{"id": i, "name": f"class_{i}", "supercategory": "thing"} for i in COCO_IDS]
    json_file = root / "instances_train.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    folder = root / "train"
    folder.mkdir(exist_ok=True)
    for image in images:
        os.close(os.open(folder / image["file_name"], os.O_CREAT | os.O_WRONLY, 0o644))
    return json_file


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = documented_parser(__doc__, "docs/data_checks.md")
    parser.add_argument("--root", type=Path, required=True, help="folder for the json and the empty image files")
    parser.add_argument("--images", type=int, default=118287)
    parser.add_argument("--boxes", type=int, default=860001)
    parser.add_argument("--detectron2", action="store_true", help="also time Detectron2's load_coco_json")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    json_file, seconds = timed(lambda: write_coco(args.root, args.images, args.boxes))
    print(f"wrote {json_file} ({json_file.stat().st_size / 1e6:.0f} MB) and {args.images} empty images "
          f"in {seconds:.1f} s")

    _, parse = timed(lambda: json.load(open(json_file)))
    facts, check_json = timed(lambda: read_coco_facts(str(json_file), "bench"))
    missing, check_files = timed(lambda: missing_files(str(args.root / "train"), facts.file_names))
    assert not missing and facts.num_annotations == args.boxes
    rows = [("json.load alone (paid anyway)", parse), ("read_coco_facts: parse + counts", check_json),
            ("missing_files: image files", check_files), ("the check (both)", check_json + check_files)]
    if args.detectron2:
        from detectron2.data.datasets import load_coco_json

        _, d2 = timed(lambda: load_coco_json(str(json_file), str(args.root / "train"), "bench_coco"))
        rows.append(("detectron2 load_coco_json (the loader)", d2))
    for name, value in rows:
        print(f"{name:42s} {value:7.2f} s   {value / parse:5.2f} x json.load")


if __name__ == "__main__":
    main()
