"""A user's own COCO-format data through tools/train_net.py only: registration from the config,
the teacher's OPTS, the class-count check, and bad input that fails before any work."""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import load_tool

from topkd_det.config_io import ConfigError
from topkd_det.detection.datasets import register_coco_json
from topkd_det.detection.engine import setup_cfg

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "tools" / "train_net.py"
# Non-contiguous ids, as real exports often have: Detectron2 maps them to 0..2 and back.
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 6, "name": "bar"}, {"id": 7, "name": "post"}]
SHAPES = {3: (20, 20), 6: (36, 12), 7: (10, 34)}
COLOURS = {3: (230, 40, 40), 6: (40, 200, 40), 7: (40, 60, 230)}
TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64"]
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


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_coco")
    return {"train": write_coco(root, "train", 6), "val": write_coco(root, "val", 3)}


def train_net_cli(*args):
    return subprocess.run([sys.executable, str(TRAIN_NET), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "TQDM_DISABLE": "1"})


def train_net(*args):
    """tools/train_net.py's own argument parsing and main, in this process (no interpreter start-up)."""
    tool = load_tool("train_net")
    return tool.main(tool.parser().parse_args(list(map(str, args))))


def test_teacher_then_topkd_student_then_eval_from_the_command_line(own_data, tmp_path):
    tag = uuid.uuid4().hex[:6]
    train, val = f"own_train_{tag}", f"own_val_{tag}"
    datasets = ["--coco-dataset", train, *own_data["train"], "--coco-dataset", val, *own_data["val"],
                "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)"]
    teacher_dir = tmp_path / "teacher"
    train_net("--config-file", "configs/embedded/teacher.yaml", *datasets, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
              "OUTPUT_DIR", teacher_dir, *TINY, *SCHEDULE)
    assert (teacher_dir / "model_final.pth").is_file()

    # The teacher keeps its own config file; only its class count and tiny sizes change, key by key.
    teacher_opts = ["MODEL.ROI_HEADS.NUM_CLASSES", 3] + [int(v) if v.isdigit() else v for v in TINY[:10]]
    student_dir = tmp_path / "student"
    train_net("--config-file", "configs/embedded/topkd.yaml", *datasets, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
              "MODEL.TEACHER.WEIGHTS", teacher_dir / "model_final.pth", "MODEL.TEACHER.OPTS", repr(teacher_opts),
              "MODEL.DISTILL.TOPKD.K", 1, "OUTPUT_DIR", student_dir, *TINY, *SCHEDULE)
    log = (student_dir / "log.txt").read_text()
    assert "loss_con" in log and "loss_tdl" in log  # TopKD's terms were trained and logged

    # --eval-only from the dumped config alone: the datasets are in it, nothing is repeated.
    metrics = train_net("--config-file", student_dir / "config.yaml", "--eval-only", "MODEL.WEIGHTS",
                        student_dir / "model_final.pth", "OUTPUT_DIR", tmp_path / "eval")
    assert set(metrics["bbox"]) >= {"AP", "AP50", "AP-square", "AP-bar", "AP-post"}  # the json's class names
    results = json.loads((tmp_path / "eval" / "inference" / val / "coco_instances_results.json").read_text())
    # Detections are reported in the json's own category ids.
    assert {r["category_id"] for r in results} <= {3, 6, 7}


def test_too_few_classes_fail_before_anything_is_built(own_data, tmp_path):
    tag = uuid.uuid4().hex[:6]
    out = tmp_path / "run"
    proc = train_net_cli("--config-file", "configs/embedded/student.yaml", "--coco-dataset", f"mine_{tag}",
                     *own_data["train"], "DATASETS.TRAIN", f"('mine_{tag}',)", "DATASETS.TEST", "()",
                     "MODEL.ROI_HEADS.NUM_CLASSES", 2, "OUTPUT_DIR", out)
    assert proc.returncode != 0
    assert f"'mine_{tag}' has 3 categories but MODEL.ROI_HEADS.NUM_CLASSES is 2" in proc.stderr
    assert not out.exists()  # nothing dumped, nothing trained


def _entry(name, json_file, images):
    return f"[['{name}', '{json_file}', '{images}']]"


def _setup(entries, *opts, config="configs/embedded/student.yaml"):
    return setup_cfg(str(REPO / config), ["DATASETS.COCO_INSTANCES", entries, *opts])


def test_registration_is_idempotent_and_refuses_a_name_with_other_files(own_data):
    name = f"twice_{uuid.uuid4().hex[:6]}"
    register_coco_json(name, *own_data["train"], key="test")
    register_coco_json(name, *own_data["train"], key="test")  # same files: nothing happens
    with pytest.raises(ConfigError, match=f"'{name}' is already registered"):
        register_coco_json(name, *own_data["val"], key="test")


def test_the_coco_2017_names_cannot_be_pointed_at_other_files(own_data):
    with pytest.raises(ConfigError, match="DATASETS.COCO_INSTANCES\\[0\\]: dataset 'coco_2017_train' is already "
                                          "registered.*choose another name"):
        _setup(_entry("coco_2017_train", *own_data["train"]))


def _bad_json(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case, match", [
    ("missing json", r"DATASETS.COCO_INSTANCES\[0\]: dataset 'x_\w+': no such json file '.*nope.json'"),
    ("missing images", r"DATASETS.COCO_INSTANCES\[0\]: dataset 'x_\w+': no such image folder '.*nope_dir'"),
    ("empty json", r"DATASETS.COCO_INSTANCES\[0\]: .*bad.json is empty"),
    ("truncated json", r"DATASETS.COCO_INSTANCES\[0\]: .*bad.json is not valid JSON .* at line 1 column \d+, "
                       r"char \d+ of \d+; a truncated file"),
    ("not coco", r"DATASETS.COCO_INSTANCES\[0\]: .*bad.json is not a COCO instances file: it lacks annotations"),
    ("two items", r"DATASETS.COCO_INSTANCES\[0\] = \['x_\w+', '.*'\]: each entry must be a list of 3"),
    ("not a list", r"DATASETS.COCO_INSTANCES\[0\] = 'x_\w+': each entry must be a list of 3"),
])
def test_bad_dataset_entries_fail_with_one_clear_line(own_data, tmp_path, case, match):
    name = f"x_{uuid.uuid4().hex[:6]}"
    json_file, images = own_data["train"]
    full = json.loads(Path(json_file).read_text())
    entries = {  # built lazily: each case writes its own bad.json
        "missing json": lambda: _entry(name, tmp_path / "nope.json", images),
        "missing images": lambda: _entry(name, json_file, tmp_path / "nope_dir"),
        "empty json": lambda: _entry(name, _bad_json(tmp_path, ""), images),
        "truncated json": lambda: _entry(name, _bad_json(tmp_path, json.dumps(full)[:150]), images),
        "not coco": lambda: _entry(name, _bad_json(tmp_path, json.dumps({"images": [], "categories": CATEGORIES})),
                                   images),
        "two items": lambda: f"[['{name}', '{json_file}']]",
        "not a list": lambda: f"['{name}']",
    }[case]()
    with pytest.raises(ConfigError, match=match) as info:
        _setup(entries)
    assert "\n" not in str(info.value)


def test_an_unknown_dataset_lists_the_known_names(own_data):
    name = f"known_{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError, match=rf"DATASETS.TRAIN: dataset 'typo_train' is not registered .*"
                                          rf"registered by DATASETS.COCO_INSTANCES: {name}"):
        _setup(_entry(name, *own_data["train"]), "DATASETS.TRAIN", "('typo_train',)", "DATASETS.TEST", "()")


def test_class_count_mismatch_names_both_numbers_and_the_key(own_data):
    name = f"count_{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError, match=rf"DATASETS.TEST: dataset '{name}' has 3 categories but "
                                          r"MODEL.ROI_HEADS.NUM_CLASSES is 24; set MODEL.ROI_HEADS.NUM_CLASSES 3"):
        _setup(_entry(name, *own_data["val"]), "DATASETS.TRAIN", "()", "DATASETS.TEST", f"('{name}',)")


@pytest.mark.parametrize("opts, match", [
    ("['MODEL.ROI_HEADS.NUM_CLASSE', 3]", r"MODEL.TEACHER.OPTS \(the teacher's own KEY VALUE overrides\) "
                                          r"'MODEL.ROI_HEADS.NUM_CLASSE 3': Non-existent key"),
    ("['MODEL.ROI_HEADS.NUM_CLASSES']", r"MODEL.TEACHER.OPTS .*an odd number of items \(1\)"),
    ("['MODEL.ROI_HEADS.NUM_CLASSES', 5]", r"the teacher has 5 classes .* the student's "
                                           r"MODEL.ROI_HEADS.NUM_CLASSES is 24"),
])
def test_bad_teacher_opts(opts, match):
    with pytest.raises(ConfigError, match=match):
        setup_cfg(str(REPO / "configs/embedded/topkd.yaml"),
                  ["MODEL.TEACHER.OPTS", opts, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])
