"""A user's own COCO-format data through tools/train_net.py only: registration from the config,
the teacher's OPTS, the class-count check, and bad input that fails before any work."""
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances

from conftest import load_tool
from own_coco_fixtures import CATEGORIES, SCHEDULE, TINY, rewrite_json, write_coco
from run_fixtures import StepCounter
from topkd_det.config_io import ConfigError
from topkd_det.detection.coco_facts import INVALID_POLYGON, OUTSIDE, ZERO_SIZE, read_coco_facts
from topkd_det.detection.datasets import register_coco_json
from topkd_det.detection.engine import check_cfg

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "tools" / "train_net.py"


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
    return check_cfg(str(REPO / config), ["DATASETS.COCO_INSTANCES", entries, *opts])


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
        check_cfg(str(REPO / "configs/embedded/topkd.yaml"),
                  ["MODEL.TEACHER.OPTS", opts, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])



# --- the dataset check: what it counts is what Detectron2 drops, and what its keys accept ------------------
def _mixed_boxes(data):
    """One box of each kind the check tells apart (64 px images, 3 annotations each; annotation i is index i)."""
    anns = data["annotations"]
    boxes = {0: [4, 4, 0, 20], 12: [4, 4, 0, 20], 13: [30, 4, 10, 0], 14: [40, 4, 0, 0],  # zero width or height
             # Negative height: its corners span y 1..4, which Detectron2 trains (floats: Detectron2 resizes
             # integer boxes in an integer array, which truncates them).
             1: [30.0, 4.0, 10.0, -3.0],
             2: [64, 10, 5, 5], 3: [-20, 10, 10, 10], 4: [-10, 5, 10, 10],  # outside: right, left, touching
             10: [-2, 5, -10, 10],  # negative width, spanning x -12..-2: outside
             5: [50, 50, 30, 30], 9: [-5, 5, 20, 20]}  # partly outside: clipped and kept
    for i, box in boxes.items():
        anns[i]["bbox"] = box
    anns[6]["iscrowd"] = 1
    anns[7]["segmentation"] = [[1, 2, 3, 4]]  # no polygon of 3 points: skipped when Detectron2 loads the json
    x, y, w, h = anns[8]["bbox"]
    anns[8]["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_an_unreadable_annotation_file_names_the_key_and_the_reason(tmp_path):
    with pytest.raises(ConfigError, match=r"^DATASETS\.COCO_INSTANCES\[0\]: .*missing\.json cannot be read "
                                          r"\(No such file or directory\)$"):
        read_coco_facts(str(tmp_path / "missing.json"), "DATASETS.COCO_INSTANCES[0]")
    with pytest.raises(ConfigError, match=r"^DATASETS\.COCO_INSTANCES\[0\]: .* cannot be read \(.*Is a directory"):
        read_coco_facts(str(tmp_path), "DATASETS.COCO_INSTANCES[0]")


def test_the_check_counts_the_boxes_detectron2_drops(own_data, tmp_path):
    json_file = rewrite_json(own_data["train"][0], tmp_path / "mixed.json", _mixed_boxes)
    name = f"mixed_{uuid.uuid4().hex[:6]}"
    register_coco_json(name, json_file, own_data["train"][1], key="test")
    facts = read_coco_facts(json_file, "test")
    assert {reason: t.count for reason, t in facts.dropped.items()} == {ZERO_SIZE: 4, OUTSIDE: 4, INVALID_POLYGON: 1}
    assert (facts.misplaced.count, facts.clipped.count, facts.crowd.count) == (1, 2, 1)
    assert (facts.usable, facts.images_without_usable) == (8, 1)  # image 5 has only zero-size boxes

    # Detectron2's own path on this build: its json loader, then its training mapper (resize and flip).
    mapper = DatasetMapper(is_train=True, image_format="RGB", use_instance_mask=False,
                           augmentations=[T.ResizeShortestEdge((96,), 200, "choice"), T.RandomFlip(prob=1.0)])
    instances = [mapper(d)["instances"] for d in DatasetCatalog.get(name)]
    assert [len(i) for i in instances] == [1, 1, 1, 2, 0, 3]
    assert sum(len(i) for i in instances) == facts.usable
    # The negative-height box is trained, as the box its corners span (y 1..4, resized by 96/64).
    assert [1.5, 6.0] in instances[0].gt_boxes.tensor[:, [1, 3]].tolist()


LAZY_SMALL = ["model.roi_heads.batch_size_per_image=16", "model.proposal_generator.post_nms_topk=[64,32]",
              "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
              "dataloader.train.mapper.augmentations.0.max_size=64", "train.device=cpu"]


@pytest.fixture(scope="module")
def own_teacher(own_data, tmp_path_factory):
    """A 3-class teacher trained one iteration on the own data: its checkpoint stores their class names."""
    out = tmp_path_factory.mktemp("own_teacher")
    name = f"own_teacher_{uuid.uuid4().hex[:6]}"
    train_net("--config-file", "configs/embedded/teacher.yaml", "--coco-dataset", name, *own_data["train"],
              "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", 3,
              "OUTPUT_DIR", out, *TINY, "SOLVER.MAX_ITER", 1, "SOLVER.STEPS", "()")
    assert torch.load(out / "model_final.pth", weights_only=True)["classes"] == ["square", "bar", "post"]
    return out


def _student_argv(tool_name, data, out, teacher):
    """One iteration of the TopKD student on ``data`` ((json, images), registered under a new name)."""
    name = f"own_{uuid.uuid4().hex[:6]}"
    teacher_opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "3", *TINY[:10]]
    if tool_name == "train_net":
        return name, ["--config-file", "configs/embedded/topkd.yaml", "--coco-dataset", name, *data,
                      "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                      "MODEL.TEACHER.WEIGHTS", str(teacher / "model_final.pth"), "MODEL.TEACHER.OPTS",
                      repr(teacher_opts), "MODEL.DISTILL.TOPKD.K", "1", "OUTPUT_DIR", str(out), *TINY,
                      "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()"]
    register_coco_instances(name, {}, *data)  # as a LazyConfig file registers its data
    return name, ["--config-file", str(REPO / "configs/embedded/topkd.py"), f"dataloader.train.dataset.names={name}",
                  "dataloader.test.dataset.names=[]", "model.roi_heads.num_classes=3",
                  "model.distill_loss.options.topkd.k=1", f"model.teacher.weights={teacher / 'model_final.pth'}",
                  f"model.teacher.opts=[{','.join(teacher_opts)}]", f"train.output_dir={out}", "train.max_iter=1",
                  *LAZY_SMALL]


@pytest.mark.parametrize("tool_name, accept", [("train_net", ["DATASETS.MAX_BAD_BOX_FRACTION", "0.12"]),
                                               ("lazyconfig_train_net", ["train.max_bad_box_fraction=0.12"])])
def test_the_threshold_key_accepts_dropped_boxes_and_the_log_counts_them(tool_name, accept, own_data, own_teacher,
                                                                         tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    json_file = rewrite_json(own_data["train"][0], tmp_path / "two_zero.json",
                             lambda data: [data["annotations"][i]["bbox"].__setitem__(2, 0) for i in (0, 1)])
    name, argv = _student_argv(tool_name, (json_file, own_data["train"][1]), tmp_path / "run", own_teacher)
    steps = StepCounter(monkeypatch)
    load_tool(tool_name).cli(argv + accept)
    assert steps.count == 1
    log = (tmp_path / "run" / "log.txt").read_text()
    key = "DATASETS.TRAIN" if tool_name == "train_net" else "dataloader.train.dataset.names"
    assert (f"data check: dataset '{name}' ({key}), {json_file}: 6 images (all files present), 18 annotations, "
            "3 classes; 16 usable boxes; dropped by Detectron2: 2 zero width or height; 0 with negative width") in log


@pytest.mark.parametrize("tool_name, accept", [("train_net", ["MODEL.TEACHER.ALLOW_OTHER_CLASSES", "True"]),
                                               ("lazyconfig_train_net", ["train.allow_other_teacher_classes=True"])])
def test_a_teacher_of_other_class_names_distills_when_accepted(tool_name, accept, own_data, own_teacher, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    json_file = rewrite_json(own_data["train"][0], tmp_path / "renamed.json",
                             lambda data: data["categories"][0].update(name="box"))
    _, argv = _student_argv(tool_name, (json_file, own_data["train"][1]), tmp_path / "run", own_teacher)
    steps = StepCounter(monkeypatch)
    # A handler of its own: Detectron2's setup_logger may stop topkd_det's records at its own logger.
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    class_names_logger = logging.getLogger("topkd_det.detection.class_names")
    class_names_logger.addHandler(handler)
    try:
        load_tool(tool_name).cli(argv + accept)
    finally:
        class_names_logger.removeHandler(handler)
    assert steps.count == 1
    warnings = [r.getMessage() for r in records if "distilling anyway" in r.getMessage()]
    assert len(warnings) == 1
    assert "the teacher was trained on the classes [square, bar, post]" in warnings[0]
    assert "the student's are [box, bar, post]" in warnings[0]
    assert warnings[0].endswith(f"; distilling anyway ({' '.join(accept)})")
    # The student's own checkpoint carries its classes, for when it teaches in turn.
    assert torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)["classes"] == ["box", "bar", "post"]


def test_without_stored_names_the_teacher_configs_training_data_gives_them(own_data, own_teacher, tmp_path):
    state = torch.load(own_teacher / "model_final.pth", weights_only=True)
    del state["classes"]
    weights = tmp_path / "no_names.pth"
    torch.save(state, weights)
    json_file = rewrite_json(own_data["train"][0], tmp_path / "reordered.json",
                             lambda data: data.update(categories=[{"id": 3, "name": "bar"}, {"id": 6, "name": "square"},
                                                                  {"id": 7, "name": "post"}]))
    name = f"reordered_{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError, match=rf"the teacher was trained on the classes \[square, bar, post\] \(3\) "
                                          rf"\(.*train.json, the teacher config's DATASETS.TRAIN 'own_teacher_\w+'\), "
                                          rf"but the student's are \[bar, square, post\] \(3\) "
                                          rf"\(DATASETS.TRAIN '{name}'\)"):
        check_cfg(str(REPO / "configs/embedded/topkd.yaml"),
                  ["DATASETS.COCO_INSTANCES", _entry(name, json_file, own_data["train"][1]), "DATASETS.TRAIN",
                   f"('{name}',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.DISTILL.TOPKD.K", 1,
                   "MODEL.TEACHER.CONFIG_FILE", str(own_teacher / "config.yaml"),
                   "MODEL.TEACHER.WEIGHTS", str(weights)])


def test_an_invalid_polygon_counts_against_a_training_set_only(own_data, tmp_path):
    """COCO evaluation reads a test set's json itself, where such an annotation's box is intact."""
    json_file = rewrite_json(own_data["val"][0], tmp_path / "polygon.json",
                             lambda data: data["annotations"][0].update(segmentation=[[1, 2, 3, 4]]))
    name = f"polygon_{uuid.uuid4().hex[:6]}"
    entry = _entry(name, json_file, own_data["val"][1])
    check_cfg(str(REPO / "configs/embedded/student.yaml"), ["DATASETS.COCO_INSTANCES", entry, "DATASETS.TRAIN", "()",
                                                            "DATASETS.TEST", f"('{name}',)",
                                                            "MODEL.ROI_HEADS.NUM_CLASSES", 3])
    with pytest.raises(ConfigError, match=r"1 invalid polygon \(fewer than 3 points\) \(e.g. annotation id 1\)"):
        check_cfg(str(REPO / "configs/embedded/student.yaml"), ["DATASETS.COCO_INSTANCES", entry, "DATASETS.TRAIN",
                                                                f"('{name}',)", "DATASETS.TEST", "()",
                                                                "MODEL.ROI_HEADS.NUM_CLASSES", 3])
