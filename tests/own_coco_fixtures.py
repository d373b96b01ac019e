"""A user's own COCO-format data in miniature: 64 px images with three categories of non-contiguous
ids, written as a json + image folder, and the tiny model sizes and schedule its runs use."""
import json
from pathlib import Path

from PIL import Image, ImageDraw

# Non-contiguous ids, as real exports often have: Detectron2 maps them to 0..2 and back.
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 6, "name": "bar"}, {"id": 7, "name": "post"}]
SHAPES = {3: (20, 20), 6: (36, 12), 7: (10, 34)}
COLOURS = {3: (230, 40, 40), 6: (40, 200, 40), 7: (40, 60, 230)}
TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"]
SCHEDULE = ["SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1", "SEED", "0"]


def write_coco(root: Path, split: str, num_images: int) -> tuple:
    images_dir = root / split
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(num_images):
        canvas = Image.new("RGB", (64, 64), (128, 128, 128))
        draw = ImageDraw.Draw(canvas)
        for j, cat in enumerate(CATEGORIES):
            w, h = SHAPES[cat["id"]]
            x, y = 4 + 18 * j, 4 + (7 * i + 11 * j) % 24
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[cat["id"]])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat["id"],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        canvas.save(images_dir / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64})
    json_file = root / f"{split}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return str(json_file), str(images_dir)


def rewrite_json(src: str, dst: Path, change) -> str:
    """``dst``: the json ``src`` after ``change(data)`` (which edits it in place)."""
    data = json.loads(Path(src).read_text())
    change(data)
    Path(dst).write_text(json.dumps(data))
    return str(dst)
