"""Register COCO-format datasets with Detectron2 (the synthetic shapes, and a user's own through
``DATASETS.COCO_INSTANCES``), and check ``DATASETS.TRAIN/TEST`` before anything is built."""
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from topkd_det.config_io import ConfigError
from topkd_det.data.synthetic_coco import SPLITS, default_root, image_root, json_path

from .coco_facts import read_coco_facts

SYNTHETIC_PREFIX = "synthetic_shapes"
COCO_INSTANCES_KEY = "DATASETS.COCO_INSTANCES"


def read_coco_categories(json_file: str, key: str) -> List[str]:
    """The category names of a COCO instances json, in the order of their ids (Detectron2's
    contiguous class order). ``key`` names where the file came from in errors. The json is read once
    for this and for the dataset check (``coco_facts``)."""
    return list(read_coco_facts(json_file, key).categories)


def register_coco_json(name: str, json_file: str, images: str, key: str) -> None:
    """Register one COCO-format dataset under ``name`` with its class names in the metadata.

    The same name with the same files again is a no-op; with other files it is an error, because
    Detectron2 would otherwise keep the first registration and silently use other data than asked for.
    """
    json_file, images = os.path.abspath(json_file), os.path.abspath(images)
    if not os.path.isfile(json_file):
        raise ConfigError(f"{key}: dataset {name!r}: no such json file {json_file!r}")
    if not os.path.isdir(images):
        raise ConfigError(f"{key}: dataset {name!r}: no such image folder {images!r}")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        registered = (meta.get("json_file"), meta.get("image_root"))
        if registered[0] and os.path.abspath(registered[0]) == json_file and \
                registered[1] and os.path.abspath(registered[1]) == images:
            return
        raise ConfigError(f"{key}: dataset {name!r} is already registered with json {registered[0]!r} and "
                          f"images {registered[1]!r}, not {json_file!r} and {images!r}; choose another name")
    classes = read_coco_categories(json_file, key)
    register_coco_instances(name, {"thing_classes": classes}, json_file, images)


def register_coco_instances_from_cfg(entries: Sequence[Any], key: str = COCO_INSTANCES_KEY) -> List[str]:
    """Register each ``[name, json_file, image_root]`` of ``DATASETS.COCO_INSTANCES``; return the names."""
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{key} must be a list of [name, json_file, image_root] entries, got {entries!r}")
    names = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and all(isinstance(x, str) and x for x in entry)):
            raise ConfigError(f"{key}[{i}] = {entry!r}: each entry must be a list of 3 non-empty strings "
                              "[name, json_file, image_root]")
        register_coco_json(*entry, key=f"{key}[{i}]")
        names.append(entry[0])
    return names


def register_synthetic(root, name_prefix: str = SYNTHETIC_PREFIX,
                       splits: Iterable[str] = SPLITS) -> Dict[str, str]:
    """Register `<name_prefix>_<split>` for each split of the dataset generated under root.

    Returns {split: dataset name}. Registering the same name with the same files again is a no-op;
    the same name with other files raises ConfigError (see ``register_coco_json``).
    """
    names = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for {root}; expected one of {SPLITS}")
        json_file = json_path(root, split)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"{os.path.abspath(json_file)} not found: generate the dataset first with "
                f"tools/make_synthetic_coco.py --root {root} (or topkd_det.data.synthetic_coco.generate)"
            )
        name = f"{name_prefix}_{split}"
        register_coco_json(name, json_file, image_root(root, split), key=f"synthetic data {root}")
        names[split] = name
    return names


def register_builtin_synthetic() -> Dict[str, str]:
    """Register `synthetic_shapes_<split>` from default_root() if it has been generated there.

    Names already registered are left alone, so an explicit register_synthetic(other_root) made
    before takes precedence. Nothing is registered when the data is missing; the configs that name
    it then fail in check_dataset_registered, which says how to generate it.
    """
    root = default_root()
    registered = DatasetCatalog.list()
    splits = [split for split in SPLITS if os.path.isfile(json_path(root, split))
              and f"{SYNTHETIC_PREFIX}_{split}" not in registered]
    return register_synthetic(root, splits=splits)


def check_dataset_registered(name: str, key: Optional[str] = None, own_names: Sequence[str] = (),
                             own_data_hint: str = f"add [name, json_file, image_root] to {COCO_INSTANCES_KEY}") -> None:
    """Raise ConfigError naming the dataset (and the config key it came from, if given), the
    registered names that look like what was meant, and ``own_names`` (those the config registered).
    ``own_data_hint`` says how a user registers their own COCO-format data in this kind of config."""
    registered = DatasetCatalog.list()
    if name in registered:
        return
    prefix = name.rsplit("_", 1)[0]
    similar = sorted(n for n in registered if n.startswith(prefix))
    hint = (f"registered datasets starting with {prefix!r}: {', '.join(similar)}" if similar
            else f"no registered dataset starts with {prefix!r}")
    if own_names:
        hint += f"; registered by {COCO_INSTANCES_KEY}: {', '.join(own_names)}"
    where = f"{key}: " if key else ""
    raise ConfigError(
        f"{where}dataset {name!r} is not registered with Detectron2 ({hint}). For your own COCO-format data, "
        f"{own_data_hint}; for the synthetic data, generate it "
        f"with tools/make_synthetic_coco.py --root {default_root()} (register_builtin_synthetic() picks it "
        "up from there), or call topkd_det.detection.datasets.register_synthetic(root)"
    )


def check_dataset_files(name: str, key: str) -> None:
    """A registered COCO-format dataset's json and image folder exist (Detectron2 would only find out
    when the data loader is built, after the model)."""
    meta = MetadataCatalog.get(name)
    json_file, images = meta.get("json_file"), meta.get("image_root")
    if json_file and not os.path.isfile(json_file):
        raise ConfigError(f"{key}: dataset {name!r} needs {json_file!r}, which does not exist (for Detectron2's "
                          "builtin datasets, set DETECTRON2_DATASETS to the folder that holds them)")
    if images and not os.path.isdir(images):
        raise ConfigError(f"{key}: dataset {name!r} needs the image folder {images!r}, which does not exist")


def check_class_count(name: str, key: str, num_classes: int, classes_key: str = "MODEL.ROI_HEADS.NUM_CLASSES",
                      teacher_opts_key: str = "MODEL.TEACHER.OPTS") -> None:
    """The dataset's category count, where its metadata knows it, equals the model's (set at
    ``classes_key``): with fewer heads than categories the extra classes would train as background, silently."""
    classes = MetadataCatalog.get(name).get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        raise ConfigError(f"{key}: dataset {name!r} has {len(classes)} categories but {classes_key} "
                          f"is {num_classes}; set {classes_key} {len(classes)} (and the teacher's "
                          f"with {teacher_opts_key} if it differs)")
