"""The bad-data catalogue, twin of test_bad_input_catalogue.py for a user's own COCO data: a json or
image folder damaged one way per case, or a model that asks of the data what it lacks, through both
tools (tools/train_net.py with --coco-dataset; tools/lazyconfig_train_net.py with the dataset
registered by Detectron2's register_coco_instances, as a LazyConfig file does). Every case must exit
with status 2 and one ``error:`` line naming the file, field or key (and an example id where there is
one), with no training step and no run folder left behind."""
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest
import torch
from detectron2.data.datasets import register_coco_instances

from conftest import load_tool
from own_coco_fixtures import TINY, rewrite_json, write_coco
from run_fixtures import StepCounter

REPO = Path(__file__).resolve().parents[1]
TOOLS = {name: load_tool(name) for name in ("train_net", "lazyconfig_train_net")}
YAML, LAZY = "train_net", "lazyconfig_train_net"
TEACHER_OPTS = ["MODEL.ROI_HEADS.NUM_CLASSES", "3", *TINY[:10]]
LAZY_TINY = ["model.proposal_generator.post_nms_topk=[64,32]", "model.roi_heads.batch_size_per_image=16",
             "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
             "dataloader.train.mapper.augmentations.0.max_size=64",
             "dataloader.test.mapper.augmentations.0.short_edge_length=64",
             "dataloader.test.mapper.augmentations.0.max_size=64", "train.device=cpu"]
PERMUTED = [{"id": 3, "name": "bar"}, {"id": 6, "name": "square"}, {"id": 7, "name": "post"}]


@dataclass
class Case:
    id: str
    fragments: Callable[[str, dict], List[str]]  # tool, paths -> what the error line must contain
    damage: Optional[Callable[[dict], None]] = None  # edits the training json
    remove_images: Tuple[str, ...] = ()  # image files deleted from a copy of the image folder
    test_damage: Optional[Callable[[dict], None]] = None  # a test dataset: the intact val json, so edited
    yaml: Optional[Tuple[str, ...]] = ()  # extra train_net arguments (flags first); None: no YAML case
    lazy: Optional[Tuple[str, ...]] = ()  # extra lazyconfig_train_net arguments; None: no LazyConfig case
    yaml_config: str = "configs/embedded/student.yaml"
    lazy_config: str = "topkd"  # a key of ctx's lazy configs
    flags_last: bool = False  # flags after the overrides (the case of item 3)

    def tools(self):
        return [tool for tool, extra in ((YAML, self.yaml), (LAZY, self.lazy)) if extra is not None]


def on_both(yaml_text: str, lazy_text: str):
    return lambda tool: yaml_text if tool == YAML else lazy_text


def fixed(*fragments):
    return lambda tool, p: [f(tool) if callable(f) else f for f in fragments]


def with_json(*fragments):
    return lambda tool, p: [p["json"], *fixed(*fragments)(tool, p)]


def set_image(index, **fields):
    def change(data):
        for name, value in fields.items():
            if value is None:
                del data["images"][index][name]
            else:
                data["images"][index][name] = value
    return change


def set_annotations(indices, **fields):
    def change(data):
        for i in indices:
            data["annotations"][i].update(fields)
    return change


def set_boxes(boxes):
    def change(data):
        for i, box in boxes.items():
            data["annotations"][i]["bbox"] = box
    return change


def every_annotation(**fields):
    return lambda data: [a.update(fields) for a in data["annotations"]]


FRACTION = on_both("DATASETS.MAX_BAD_BOX_FRACTION", "train.max_bad_box_fraction")
TOPKD_YAML = ("MODEL.TEACHER.WEIGHTS", "@teacher", "MODEL.TEACHER.OPTS", repr(TEACHER_OPTS),
              "MODEL.DISTILL.TOPKD.K", "1")

CASES = [
    # --- the json ------------------------------------------------------------------------------------
    Case("image_without_height", with_json("image id 2 has no 'height'"), damage=set_image(1, height=None)),
    Case("image_without_width", with_json("image id 1 has no 'width'"), damage=set_image(0, width=None)),
    Case("image_with_zero_width", with_json("image id 4 has width 0"), damage=set_image(3, width=0)),
    Case("image_without_file_name", with_json("image id 3 has no 'file_name'"), damage=set_image(2, file_name=None)),
    Case("image_without_id", with_json("'images'[1] has no 'id'"), damage=set_image(1, id=None)),
    Case("duplicate_image_id", with_json("image id 1 appears twice in 'images'"), damage=set_image(1, id=1)),
    Case("duplicate_category_id", with_json("category id 3 appears twice in 'categories'"),
         damage=lambda data: data["categories"][1].update(id=3)),
    Case("annotation_without_id", with_json("'annotations'[4] has no 'id'"),
         damage=lambda data: data["annotations"][4].pop("id")),
    Case("unknown_category_id", with_json("annotation id 5 has category_id 99", "its ids: 3, 6, 7"),
         damage=set_annotations([4], category_id=99)),
    Case("annotation_on_unknown_image", with_json("annotation id 3 has image_id 999, which 'images' does not list"),
         damage=set_annotations([2], image_id=999)),
    Case("duplicate_annotation_id", with_json("annotation id 1 appears twice"), damage=set_annotations([1], id=1)),
    Case("annotation_without_bbox", with_json("annotation id 7 has bbox None"),
         damage=lambda data: data["annotations"][6].pop("bbox")),
    Case("bbox_of_strings", with_json("annotation id 2 has bbox ['4', '4', '20', '20']"),
         damage=lambda data: data["annotations"][1].update(bbox=["4", "4", "20", "20"])),
    Case("image_id_of_a_wrong_type", with_json("a field holds a value of the wrong type (unhashable type: 'list')"),
         damage=set_annotations([0], image_id=[1])),
    Case("ignore_flag", with_json("annotation id 2 has ignore=1"), damage=set_annotations([1], ignore=1)),
    Case("no_annotations", with_json("has no annotations ('annotations' is empty)"),
         damage=lambda data: data.update(annotations=[])),
    Case("crowd_only", with_json("all 18 annotations are iscrowd=1 (e.g. annotation id 1)"),
         damage=every_annotation(iscrowd=1)),
    Case("every_box_degenerate", with_json("none of its 18 annotations can be trained on",
                                           "18 zero width or height (e.g. annotation id 1)"),
         damage=lambda data: [a["bbox"].__setitem__(2, 0) for a in data["annotations"]]),
    # --- boxes Detectron2 drops: counted by reason, refused above the threshold -------------------------
    Case("zero_width_boxes_above_threshold",
         with_json("Detectron2 would drop or misplace 2 of its 18 boxes (11.1%) in training",
                   "2 zero width or height (e.g. annotation id 1)", FRACTION,
                   on_both("DATASETS.MAX_BAD_BOX_FRACTION 0.112", "train.max_bad_box_fraction=0.112")),
         damage=set_boxes({0: [4, 4, 0, 20], 1: [22, 10, 0, 12]})),
    Case("negative_and_outside_boxes",
         with_json("Detectron2 would drop or misplace 2 of its 18 boxes",
                   "1 outside the image (e.g. annotation id 4)",
                   "1 negative width or height, trained as the mirrored box (e.g. annotation id 3)", FRACTION),
         damage=set_boxes({2: [40, 4, 10, -34], 3: [64, 10, 20, 20]})),
    Case("invalid_polygon", with_json("1 invalid polygon (fewer than 3 points) (e.g. annotation id 6)", FRACTION),
         damage=set_annotations([5], segmentation=[[1, 2, 3, 4]])),
    Case("degenerate_ground_truth_in_the_test_set",
         lambda tool, p: [p["test_json"], "1 of its 9 boxes (11.1%) are ground truth no detection can match",
                          "1 outside the image (e.g. annotation id 2)", FRACTION(tool)],
         test_damage=set_boxes({1: [-30, 4, 10, 10]})),
    Case("threshold_out_of_range", fixed(on_both("DATASETS.MAX_BAD_BOX_FRACTION must be in [0, 1]",
                                                 "train.max_bad_box_fraction must be a number in [0, 1]")),
         yaml=("DATASETS.MAX_BAD_BOX_FRACTION", "1.5"), lazy=("train.max_bad_box_fraction=1.5",)),
    # --- image files ------------------------------------------------------------------------------------
    Case("missing_image_files", lambda tool, p: [p["json"], f"2 of its 6 image files are missing under {p['images']}",
                                                 str(Path(p["images"]) / "0.png"), str(Path(p["images"]) / "3.png")],
         remove_images=("0.png", "3.png")),
    # --- what the model asks of the data ----------------------------------------------------------------
    Case("mask_head_without_segmentation",
         with_json(on_both("MODEL.MASK_ON is set", "model.roi_heads.mask_head is set"),
                   "18 of its 18 annotations have no segmentation (e.g. annotation id 1)"),
         yaml=("MODEL.MASK_ON", "True"), lazy=(), lazy_config="mask"),
    Case("lazy_mask_head_without_mask_targets",
         fixed("model.roi_heads has a mask head but dataloader.train.mapper.use_instance_mask is False",
               "set dataloader.train.mapper.use_instance_mask=True"),
         yaml=None, lazy=("dataloader.train.mapper.use_instance_mask=False",), lazy_config="mask"),
    Case("keypoint_head_without_keypoints",
         with_json(on_both("MODEL.KEYPOINT_ON is set", "model.roi_heads.keypoint_head is set"),
                   "18 of its 18 annotations have no keypoints"),
         yaml=("MODEL.KEYPOINT_ON", "True"), lazy=(), lazy_config="keypoint"),
    Case("lazy_keypoint_head_without_keypoint_targets",
         fixed("model.roi_heads has a keypoint head but dataloader.train.mapper.use_keypoint is False",
               "set dataloader.train.mapper.use_keypoint=True"),
         yaml=None, lazy=("dataloader.train.mapper.use_keypoint=False",), lazy_config="keypoint"),
    Case("cascade_without_class_agnostic_boxes",
         fixed(on_both("MODEL.ROI_HEADS.NAME is CascadeROIHeads, which needs MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG "
                       "True", "model.roi_heads.box_predictors.0.cls_agnostic_bbox_reg=True")),
         yaml=("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False", "MODEL.DISTILL.TOPKD.K", "1"),
         yaml_config="configs/embedded/cascade_topkd.yaml",
         lazy=("model.roi_heads.box_predictors.0.cls_agnostic_bbox_reg=False",), lazy_config="cascade"),
    Case("cascade_stages_without_their_box_weights",
         fixed("MODEL.ROI_BOX_CASCADE_HEAD.IOUS has 3 stages but BBOX_REG_WEIGHTS has 2"),
         yaml=("MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0))",
               "MODEL.DISTILL.TOPKD.K", "1"), yaml_config="configs/embedded/cascade_topkd.yaml", lazy=None),
    Case("cascade_first_stage_iou_other_than_the_heads",
         fixed("MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] is 0.6 but MODEL.ROI_HEADS.IOU_THRESHOLDS[0] is 0.5"),
         yaml=("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.6, 0.6, 0.7)", "MODEL.DISTILL.TOPKD.K", "1"),
         yaml_config="configs/embedded/cascade_topkd.yaml", lazy=None),
    Case("cascade_teacher_without_class_agnostic_boxes",
         fixed("the teacher's MODEL.ROI_HEADS.NAME is CascadeROIHeads, which needs the teacher's "
               "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True",
               on_both("set it in MODEL.TEACHER.CONFIG_FILE or with MODEL.TEACHER.OPTS",
                       "set it in model.teacher.config or with model.teacher.opts")),
         yaml=("MODEL.TEACHER.OPTS",
               "['MODEL.ROI_HEADS.NUM_CLASSES', 3, 'MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG', False]",
               "MODEL.DISTILL.TOPKD.K", "1"), yaml_config="configs/embedded/cascade_topkd.yaml",
         lazy=("model.teacher.config=configs/embedded/cascade_teacher.yaml",
               f"model.teacher.opts=[{','.join(TEACHER_OPTS)},MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG,False]")),
    Case("test_set_with_other_class_names",
         lambda tool, p: [on_both("DATASETS.TEST", "dataloader.test.dataset.names")(tool),
                          f"dataset {p['test_name']!r} has the classes [bar, square, post] (3)",
                          f"'s {p['name']!r} has [square, bar, post] (3) (class 0 is 'bar' vs 'square')"],
         test_damage=lambda data: data.update(categories=PERMUTED)),
    Case("teacher_trained_on_other_class_names",
         lambda tool, p: [f"the teacher was trained on the classes [square, bar, post] (3) (stored in "
                          f"{on_both('MODEL.TEACHER.WEIGHTS', 'model.teacher.weights')(tool)} {p['teacher']})",
                          "the student's are [bar, square, post] (3)", "class 0 is 'square' vs 'bar'",
                          on_both("set MODEL.TEACHER.ALLOW_OTHER_CLASSES True",
                                  "train.allow_other_teacher_classes=True")(tool)],
         damage=lambda data: data.update(categories=PERMUTED), yaml=TOPKD_YAML,
         yaml_config="configs/embedded/topkd.yaml"),
    # --- evaluation, flags, device ----------------------------------------------------------------------
    Case("eval_only_without_weights",
         lambda tool, p: [on_both("--eval-only needs weights: MODEL.WEIGHTS is empty and OUTPUT_DIR",
                                  "--eval-only needs weights: train.init_checkpoint is empty and "
                                  "train.output_dir")(tool),
                          f"{p['out']!r} holds no checkpoint", "randomly initialised"],
         yaml=("--eval-only",), lazy=("--eval-only",)),
    Case("flag_after_the_overrides", fixed("--resume came after the config overrides",
                                           "put flags before the overrides"),
         yaml=("--resume",), lazy=("--resume",), flags_last=True),
]
if not torch.cuda.is_available():
    CASES.append(Case("cuda_without_a_gpu", fixed(on_both("MODEL.DEVICE is 'cuda', but PyTorch sees no CUDA GPU",
                                                          "train.device is 'cuda', but PyTorch sees no CUDA GPU")),
                      yaml=("MODEL.DEVICE", "cuda"), lazy=("train.device=cuda",)))

PARAMS = [pytest.param(case, tool, id=f"{case.id}-{'yaml' if tool == YAML else 'lazy'}")
          for case in CASES for tool in case.tools()]

LAZY_VARIANTS = {
    # Detectron2's common Mask R-CNN mask head on the embedded student, with mask targets loaded.
    "mask": """
_mask = LazyConfig.load(model_zoo_config_file("common/models/mask_rcnn_fpn.py"), "model")
for _key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads[_key] = _mask.roi_heads[_key]
dataloader.train.mapper.use_instance_mask = True
""",
    # Detectron2's common keypoint head on the embedded student, with keypoint targets loaded.
    "keypoint": """
_keypoint = LazyConfig.load(model_zoo_config_file("common/models/keypoint_rcnn_fpn.py"), "model")
for _key in ("keypoint_in_features", "keypoint_pooler", "keypoint_head"):
    model.roi_heads[_key] = _keypoint.roi_heads[_key]
dataloader.train.mapper.use_keypoint = True
""",
    # Detectron2's common Cascade (Mask) R-CNN heads on the embedded student.
    "cascade": """
model.roi_heads = LazyConfig.load(model_zoo_config_file("common/models/cascade_rcnn.py"), "model").roi_heads
dataloader.train.mapper.use_instance_mask = True
""",
}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_data")
    c = {"train": write_coco(root, "train", 6), "val": write_coco(root, "val", 3)}
    tag = uuid.uuid4().hex[:6]
    teacher_dir = root / "teacher"
    tool = TOOLS[YAML]
    tool.main(tool.parser().parse_args([
        "--config-file", "configs/embedded/teacher.yaml", "--coco-dataset", f"teacher_data_{tag}", *c["train"],
        "DATASETS.TRAIN", f"('teacher_data_{tag}',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "OUTPUT_DIR", str(teacher_dir), *TINY, "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1"]))
    c["teacher"] = str(teacher_dir / "model_final.pth")
    c["lazy"] = {"topkd": str(REPO / "configs" / "embedded" / "topkd.py")}
    for name, body in LAZY_VARIANTS.items():
        path = root / f"lazy_{name}.py"
        path.write_text("from detectron2.config import LazyConfig\n"
                        "from topkd_det.detection.teacher import model_zoo_config_file\n"
                        f"_base = LazyConfig.load({c['lazy']['topkd']!r})\n"
                        "model, dataloader, optimizer, lr_multiplier, train = (_base.model, _base.dataloader, "
                        "_base.optimizer, _base.lr_multiplier, _base.train)\n" + body)
        c["lazy"][name] = str(path)
    return c


def _paths(case: Case, ctx, tmp: Path) -> dict:
    tag = uuid.uuid4().hex[:6]
    json_file, images = ctx["train"]
    if case.damage:
        json_file = rewrite_json(json_file, tmp / "train.json", case.damage)
    if case.remove_images:
        images = str(shutil.copytree(images, tmp / "images"))
        for name in case.remove_images:
            (Path(images) / name).unlink()
    paths = {"name": f"mine_{tag}", "json": json_file, "images": images, "out": str(tmp / "run"),
             "teacher": ctx["teacher"]}
    if case.test_damage:
        paths.update(test_name=f"mine_test_{tag}", test_images=ctx["val"][1],
                     test_json=rewrite_json(ctx["val"][0], tmp / "val.json", case.test_damage))
    return paths


def _yaml_argv(case: Case, p: dict) -> List[str]:
    extra = [p["teacher"] if a == "@teacher" else a for a in case.yaml]
    flags = [a for a in extra if a.startswith("--")]
    opts = [a for a in extra if not a.startswith("--")]
    datasets = ["--coco-dataset", p["name"], p["json"], p["images"]]
    test = "()"
    if "test_name" in p:
        datasets += ["--coco-dataset", p["test_name"], p["test_json"], p["test_images"]]
        test = f"('{p['test_name']}',)"
    overrides = ["DATASETS.TRAIN", f"('{p['name']}',)", "DATASETS.TEST", test, "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                 "OUTPUT_DIR", p["out"], *TINY, "SOLVER.MAX_ITER", "1", *opts]
    head = ["--config-file", case.yaml_config, *([] if case.flags_last else flags), *datasets]
    return head + overrides + (flags if case.flags_last else [])


def _lazy_argv(case: Case, p: dict, ctx) -> List[str]:
    register_coco_instances(p["name"], {}, p["json"], p["images"])
    test = "[]"
    if "test_name" in p:
        register_coco_instances(p["test_name"], {}, p["test_json"], p["test_images"])
        test = p["test_name"]
    flags = [a for a in case.lazy if a.startswith("--")]
    opts = [a for a in case.lazy if not a.startswith("--")]
    teacher_opts = ",".join(TEACHER_OPTS)
    overrides = [f"dataloader.train.dataset.names={p['name']}", f"dataloader.test.dataset.names={test}",
                 "model.roi_heads.num_classes=3", "model.distill_loss.options.topkd.k=1",
                 f"model.teacher.opts=[{teacher_opts}]", f"model.teacher.weights={p['teacher']}",
                 f"train.output_dir={p['out']}", "train.max_iter=1", *LAZY_TINY, *opts]
    head = ["--config-file", ctx["lazy"][case.lazy_config], *([] if case.flags_last else flags)]
    return head + overrides + (flags if case.flags_last else [])


@pytest.mark.parametrize("case, tool", PARAMS)
def test_bad_data_fails_before_training_naming_the_file_field_or_key(case, tool, ctx, tmp_path, monkeypatch, capsys):
    p = _paths(case, ctx, tmp_path)
    argv = _yaml_argv(case, p) if tool == YAML else _lazy_argv(case, p, ctx)
    steps = StepCounter(monkeypatch)
    # Detectron2's log handlers may still point at an earlier test's captured (closed) stderr.
    monkeypatch.setattr(logging, "raiseExceptions", False)
    with pytest.raises(SystemExit) as exit_info:
        TOOLS[tool].cli(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for fragment in case.fragments(tool, p):
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not Path(p["out"]).exists()  # no run folder: nothing dumped, nothing trained
    assert steps.count == 0
