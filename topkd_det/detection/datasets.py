"""Register the synthetic shapes dataset with Detectron2, and fail clearly on unknown dataset names."""
import json
import os
from typing import Dict, Iterable, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from topkd_det.data.synthetic_coco import SPLITS, default_root, image_root, json_path

SYNTHETIC_PREFIX = "synthetic_shapes"


def register_synthetic(root, name_prefix: str = SYNTHETIC_PREFIX,
                       splits: Iterable[str] = SPLITS) -> Dict[str, str]:
    """Register `<name_prefix>_<split>` for each split of the dataset generated under root.

    Returns {split: dataset name}. Registering the same name with the same json again is a no-op;
    the same name with a different json raises ValueError, because Detectron2 would otherwise keep
    the first registration and silently train or evaluate on other data than asked for.
    """
    names = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for {root}; expected one of {SPLITS}")
        json_file = os.path.abspath(json_path(root, split))
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"{json_file} not found: generate the dataset first with "
                f"tools/make_synthetic_coco.py --root {root} (or topkd_det.data.synthetic_coco.generate)"
            )
        name = f"{name_prefix}_{split}"
        names[split] = name
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).get("json_file")
            if registered is not None and os.path.abspath(registered) == json_file:
                continue
            raise ValueError(
                f"dataset {name!r} is already registered with json {registered!r}, "
                f"not {json_file!r}; use another name_prefix"
            )
        with open(json_file, encoding="utf-8") as f:
            categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
        register_coco_instances(
            name, {"thing_classes": [c["name"] for c in categories]},
            json_file, os.path.abspath(image_root(root, split)),
        )
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


def check_dataset_registered(name: str, key: Optional[str] = None) -> None:
    """Raise ValueError naming the dataset (and the config key it came from, if given) and the
    registered names that look like what was meant."""
    registered = DatasetCatalog.list()
    if name in registered:
        return
    prefix = name.rsplit("_", 1)[0]
    similar = sorted(n for n in registered if n.startswith(prefix))
    hint = (f"registered datasets starting with {prefix!r}: {', '.join(similar)}" if similar
            else f"no registered dataset starts with {prefix!r}")
    where = f"{key}: " if key else ""
    raise ValueError(
        f"{where}dataset {name!r} is not registered with Detectron2 ({hint}). For the synthetic "
        f"data, generate it with tools/make_synthetic_coco.py --root {default_root()} "
        "(register_builtin_synthetic() picks it up from there), or call "
        "topkd_det.detection.datasets.register_synthetic(root)"
    )
