"""The synthetic shapes dataset: deterministic, well-formed COCO, idempotent on disk, and
registered with Detectron2."""
import hashlib
import json
import uuid

import cv2
import numpy as np
import pytest
from conftest import load_tool

from topkd_det.data.synthetic_coco import (SPLITS, SyntheticConfig, attribute_distance,
                                           class_attributes, class_names, generate, image_root,
                                           json_path, render_image)

SMALL = SyntheticConfig(seed=3, num_train=16, num_val=6, num_test=6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synthetic") / "shapes", SMALL, progress=False)


def load(root, split):
    return json.loads(json_path(root, split).read_text())


def image_hashes(root, split):
    return {hashlib.sha256((image_root(root, split) / img["file_name"]).read_bytes()).hexdigest()
            for img in load(root, split)["images"]}


def test_same_seed_gives_identical_json_and_image_bytes(dataset, tmp_path):
    again = generate(tmp_path / "again", SMALL, progress=False)
    for split in SPLITS:
        assert json_path(again, split).read_text() == json_path(dataset, split).read_text()
        assert image_hashes(again, split) == image_hashes(dataset, split)


def test_different_seed_gives_different_data(dataset, tmp_path):
    other = generate(tmp_path / "other", SyntheticConfig(seed=4, num_train=16, num_val=6, num_test=6),
                     progress=False)
    assert json_path(other, "train").read_text() != json_path(dataset, "train").read_text()
    assert not image_hashes(other, "train") & image_hashes(dataset, "train")


def test_splits_have_the_requested_sizes_and_share_no_image(dataset):
    hashes = {split: image_hashes(dataset, split) for split in SPLITS}
    for split in SPLITS:
        assert len(hashes[split]) == SMALL.num_images(split)
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]


def test_annotations_are_well_formed_coco(dataset):
    for split in SPLITS:
        coco = load(dataset, split)
        images = {img["id"]: img for img in coco["images"]}
        assert coco["annotations"], split
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for img in coco["images"]:
            pixels = cv2.imread(str(image_root(dataset, split) / img["file_name"]))
            assert pixels.shape == (img["height"], img["width"], 3) == (SMALL.image_size, SMALL.image_size, 3)
        for ann in coco["annotations"]:
            img = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and ann["area"] > 0 and ann["iscrowd"] == 0
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] <= w * h
            assert 1 <= ann["category_id"] <= len(coco["categories"])


def test_every_annotation_has_polygons_of_its_visible_pixels(dataset):
    """Valid for Detectron2 (each polygon of >= 3 points, so no annotation is dropped on load), inside
    its box, and covering its visible pixels: rasterised, the polygons and the annotated area agree."""
    from pycocotools import mask as mask_util

    ratios = []
    for split in SPLITS:
        coco = load(dataset, split)
        sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
        for ann in coco["annotations"]:
            polygons = ann["segmentation"]
            assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
            x, y, w, h = ann["bbox"]
            xs, ys = [v for p in polygons for v in p[0::2]], [v for p in polygons for v in p[1::2]]
            assert x <= min(xs) and max(xs) <= x + w and y <= min(ys) and max(ys) <= y + h
            rle = mask_util.merge(mask_util.frPyObjects(polygons, *sizes[ann["image_id"]]))
            ratios.append(float(mask_util.area(rle)) / ann["area"])
    # Through pixel centres a polygon leaves out half a pixel along its outline, so it covers a bit less.
    assert 0.5 < min(ratios) and max(ratios) <= 1.0 and np.mean(ratios) > 0.8


def test_visible_polygons_of_a_sliver_fall_back_to_its_box():
    from topkd_det.data.synthetic_coco import visible_polygons

    sliver = np.zeros((16, 16), bool)
    sliver[5, 3:9] = True  # one pixel high: its contour has two points
    assert visible_polygons(sliver) == [[3.0, 5.0, 9.0, 5.0, 9.0, 6.0, 3.0, 6.0]]
    block = np.zeros((16, 16), bool)
    block[2:6, 4:10] = True
    assert visible_polygons(block) == [[4.5, 2.5, 4.5, 5.5, 9.5, 5.5, 9.5, 2.5]]


def test_categories_are_at_least_20_with_ids_1_to_c(dataset):
    categories = load(dataset, "train")["categories"]
    assert len(categories) >= 20
    assert [c["id"] for c in categories] == list(range(1, len(categories) + 1))
    attrs = class_attributes()
    assert [c["name"] for c in categories] == class_names() == [a.name for a in attrs]
    assert [c["supercategory"] for c in categories] == [a.shape for a in attrs]


def test_each_class_has_one_shape_and_one_colour_neighbour():
    attrs = class_attributes()
    for a in attrs:
        neighbours = [b for b in attrs if attribute_distance(a, b) == 1]
        assert len(neighbours) == 2, a
        assert {b.shape == a.shape for b in neighbours} == {True, False}
        assert attribute_distance(a, a) == 0


def test_pycocotools_loads_every_split(dataset):
    from pycocotools.coco import COCO

    for split in SPLITS:
        coco = COCO(str(json_path(dataset, split)))
        assert len(coco.getImgIds()) == SMALL.num_images(split)
        assert len(coco.getCatIds()) == len(class_names())


def test_mostly_hidden_objects_are_dropped_but_still_drawn():
    def rendered(min_visible):
        rng = np.random.default_rng(7)
        cfg = SyntheticConfig(min_visible=min_visible)
        return [render_image(cfg, rng) for _ in range(20)]

    lenient, strict = rendered(0.3), rendered(1.0)
    for (image_l, anns_l), (image_s, anns_s) in zip(lenient, strict):
        assert np.array_equal(image_l, image_s)
        assert all(a in anns_l for a in anns_s)
    assert sum(len(a) for _, a in strict) < sum(len(a) for _, a in lenient)


def test_rerun_with_same_parameters_reuses_the_dataset(dataset):
    stamps = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    assert generate(dataset, SMALL, progress=False) == dataset
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == stamps


def test_rerun_with_other_parameters_refuses_unless_overwrite(tmp_path):
    root = generate(tmp_path / "shapes", SMALL, progress=False)
    bigger = SyntheticConfig(seed=3, num_train=20, num_val=6, num_test=6)
    with pytest.raises(FileExistsError, match=r"num_train: 16 on disk, 20 requested"):
        generate(root, bigger, progress=False)
    assert len(load(root, "train")["images"]) == 16
    generate(root, bigger, overwrite=True, progress=False)
    assert len(load(root, "train")["images"]) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temp or stale dirs left


def test_foreign_directory_is_not_overwritten(tmp_path):
    (tmp_path / "shapes").mkdir()
    with pytest.raises(FileExistsError, match="meta.json is missing"):
        generate(tmp_path / "shapes", SMALL, progress=False)


@pytest.mark.parametrize("field, value", [("num_train", -1), ("max_objects", 0),
                                          ("min_object_size", 0.6), ("min_visible", 0.0)])
def test_bad_config_names_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})


def test_cli_generates_and_reports_mismatch(tmp_path):
    cli = load_tool("make_synthetic_coco")
    args = ["--root", str(tmp_path / "cli"), "--seed", "1", "--num-train", "3", "--num-val", "2",
            "--num-test", "2", "--image-size", "96", "--quiet"]
    assert cli.main(args) == 0
    images = load(tmp_path / "cli", "val")["images"]
    assert len(images) == 2 and images[0]["width"] == 96
    assert cli.main(args[:-3] + ["--image-size", "64", "--quiet"]) == 2


def test_detectron2_registration(dataset, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from topkd_det.detection.datasets import register_synthetic

    prefix = f"synthetic_test_{uuid.uuid4().hex[:6]}"
    names = register_synthetic(dataset, name_prefix=prefix)
    assert names == {split: f"{prefix}_{split}" for split in SPLITS}
    assert register_synthetic(dataset, name_prefix=prefix) == names  # idempotent
    for split, name in names.items():
        coco = load(dataset, split)
        records = DatasetCatalog.get(name)
        assert len(records) == len(coco["images"])
        assert sum(len(r["annotations"]) for r in records) == len(coco["annotations"])
        assert MetadataCatalog.get(name).thing_classes == class_names()
        assert MetadataCatalog.get(name).evaluator_type == "coco"
    assert max(a["category_id"] for r in DatasetCatalog.get(names["train"]) for a in r["annotations"]) \
        < len(class_names())  # contiguous 0-based ids, as Detectron2 trains on

    other = generate(tmp_path / "other", SMALL, progress=False)
    with pytest.raises(ValueError, match=f"{prefix}_train.*already registered"):
        register_synthetic(other, name_prefix=prefix)


def test_registration_needs_a_generated_dataset(tmp_path):
    from topkd_det.detection.datasets import register_synthetic

    with pytest.raises(FileNotFoundError, match="make_synthetic_coco.py"):
        register_synthetic(tmp_path / "nothing")


def test_check_dataset_registered_lists_similar_names(dataset):
    from topkd_det.detection.datasets import check_dataset_registered, register_synthetic

    prefix = f"synthetic_check_{uuid.uuid4().hex[:6]}"
    register_synthetic(dataset, name_prefix=prefix)
    check_dataset_registered(f"{prefix}_val")
    with pytest.raises(ValueError, match=f"'{prefix}_valid' is not registered.*{prefix}_test"):
        check_dataset_registered(f"{prefix}_valid")
    with pytest.raises(ValueError, match="no registered dataset starts with 'nonexistent'"):
        check_dataset_registered("nonexistent_train")


@pytest.fixture
def builtin_names():
    """The builtin names are process-wide: take any earlier registration out of the way for the
    test, and put it back afterwards, so that no other test sees this test's tmp data."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = [f"synthetic_shapes_{split}" for split in SPLITS]
    saved = [{n: catalog.pop(n) for n in names if n in catalog}
             for catalog in (DatasetCatalog, MetadataCatalog)]
    yield names
    for catalog, before in zip((DatasetCatalog, MetadataCatalog), saved):
        for name in names:
            catalog.pop(name, None)
        catalog.update(before)


def test_builtin_registration_uses_topkd_datasets(dataset, tmp_path, monkeypatch, builtin_names):
    from detectron2.data import MetadataCatalog

    from topkd_det.detection.datasets import check_dataset_registered, register_builtin_synthetic

    monkeypatch.setenv("TOPKD_DATASETS", str(tmp_path))
    assert register_builtin_synthetic() == {}  # not generated there: nothing registered
    with pytest.raises(ValueError, match=rf"DATASETS.TRAIN: dataset 'synthetic_shapes_train'.*"
                                         rf"make_synthetic_coco.py --root {tmp_path}/synthetic_shapes"):
        check_dataset_registered("synthetic_shapes_train", key="DATASETS.TRAIN")

    generate(tmp_path / "synthetic_shapes", SMALL, progress=False)
    assert register_builtin_synthetic() == dict(zip(SPLITS, builtin_names))
    assert register_builtin_synthetic() == {}  # already registered: left alone
    check_dataset_registered("synthetic_shapes_train", key="DATASETS.TRAIN")
    assert MetadataCatalog.get("synthetic_shapes_val").json_file == str(
        json_path(tmp_path / "synthetic_shapes", "val"))
