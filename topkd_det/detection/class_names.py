"""The class names a model was trained on, and the check that a teacher's are the student's.

Two teachers with the student's class count may still disagree on what each class is (other names,
or the same names in another order); distilling would then teach class i the teacher's logit of
another class, silently. So the names are compared where the teacher's are known:

1. stored in its weights file: this project's checkpoints hold the class names of their training
   data (``CLASSES``), so a trained student used later as a teacher carries them;
2. else from its config's first ``DATASETS.TRAIN`` dataset, when that dataset's classes are known
   here (registered, e.g. Detectron2's builtin COCO, or in the teacher config's
   ``DATASETS.COCO_INSTANCES``) and their count is the teacher's ``NUM_CLASSES`` (a config whose
   class count was changed by ``MODEL.TEACHER.OPTS`` was not trained on that dataset).
"""
import logging
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config_io import ConfigError
from .coco_facts import read_coco_facts
from .data_check import describe_classes, first_difference

logger = logging.getLogger(__name__)
CLASSES = "classes"  # the checkpoint entry


class KnownClasses(NamedTuple):
    names: Tuple[str, ...]
    source: str  # where they were read, for messages


def dataset_classes(names: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """The class names of the first of ``names`` that is registered with them (a run's training data)."""
    for name in names:
        if name in DatasetCatalog.list():
            classes = MetadataCatalog.get(name).get("thing_classes")
            return tuple(classes) if classes is not None else None
    return None


def student_classes(train_names: Sequence[str], key: str) -> Optional[KnownClasses]:
    """The class names of a student's training data (``key`` names where they were given)."""
    names = dataset_classes(train_names)
    return KnownClasses(names, f"{key} {train_names[0]!r}") if names is not None else None


def classes_entry(train_names: Sequence[str]) -> Dict[str, List[str]]:
    """``{CLASSES: names}`` of a run's training data, for its checkpoints; nothing when unknown."""
    names = dataset_classes(train_names)
    return {CLASSES: list(names)} if names is not None else {}


def checkpoint_classes(weights: str) -> Optional[Tuple[str, ...]]:
    """The class names a local torch checkpoint stores under ``CLASSES``; None for another file (a
    Detectron2 ``.pkl``, a URL, an older checkpoint), whose problems are reported when it is loaded."""
    if not weights or "://" in weights or not os.path.isfile(weights):
        return None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a .pkl, a foreign or damaged file: not this function's to report
        return None
    names = state.get(CLASSES) if isinstance(state, dict) else None
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def _config_dataset_classes(teacher_cfg: CfgNode, key: str) -> Optional[KnownClasses]:
    train = list(teacher_cfg.DATASETS.TRAIN)[:1]
    if not train:
        return None
    entries = {e[0]: e for e in teacher_cfg.DATASETS.get("COCO_INSTANCES", []) if isinstance(e, (list, tuple))
               and len(e) == 3}
    if train[0] in entries and os.path.isfile(entries[train[0]][1]):
        json_file = entries[train[0]][1]
        names = read_coco_facts(json_file, f"{key} DATASETS.COCO_INSTANCES").categories
        source = f"{json_file}, the teacher config's DATASETS.TRAIN {train[0]!r}"
    else:
        names = dataset_classes(train)
        source = f"the teacher config's DATASETS.TRAIN {train[0]!r}"
    if names is None or len(names) != teacher_cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        return None
    return KnownClasses(tuple(names), source)


def teacher_classes(weights: str, weights_key: str, teacher_cfg: Optional[CfgNode],
                    config_key: str) -> Optional[KnownClasses]:
    """The teacher's class names, from its weights file, else its (YAML) config's training data."""
    names = checkpoint_classes(weights)
    if names is not None:
        return KnownClasses(names, f"stored in {weights_key} {weights}")
    return _config_dataset_classes(teacher_cfg, config_key) if teacher_cfg is not None else None


def check_teacher_classes(student: Optional[KnownClasses], teacher: Optional[KnownClasses], accept: str,
                          accepted: bool) -> None:
    """Refuse a teacher whose known class names or order differ from the student's; ``accepted`` (the
    setting ``accept``, e.g. ``MODEL.TEACHER.ALLOW_OTHER_CLASSES True``) lets it through with a warning."""
    if student is None or teacher is None:
        logger.info("the teacher's and the student's class names are not both known (teacher: %s, student: %s): "
                    "compared by count only", teacher.source if teacher else "unknown",
                    student.source if student else "unknown")
        return
    if student.names == teacher.names:
        return
    message = (f"the teacher was trained on the classes {describe_classes(teacher.names)} ({teacher.source}), but "
               f"the student's are {describe_classes(student.names)} ({student.source})")
    if accepted:
        logger.warning("%s; distilling anyway (%s)", message, accept)
        return
    raise ConfigError(f"{message} ({first_difference(teacher.names, student.names)}), so class i would be taught "
                      "the teacher's logit of another class. Use a teacher trained on the same categories (names and "
                      f"id order), or set {accept} to distill anyway")
