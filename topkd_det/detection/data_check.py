"""The dataset check that runs before anything heavy, for the YAML and the LazyConfig paths: every
COCO-json dataset the run trains or evaluates on, against what the model needs of it.

Per dataset it reads the json once (``coco_facts``) and looks at the image files with one directory
listing per folder (no image is opened). It refuses, in one line naming the dataset's key, the file
and an example id: a class count other than the model's; a training set with no box to train on
(none at all, crowd only, or every box dropped); a larger fraction of boxes that Detectron2 drops
(zero width or height, outside the image, invalid polygon) or misplaces (negative width or height)
than ``DATASETS.MAX_BAD_BOX_FRACTION`` / ``train.max_bad_box_fraction`` allows; missing image files;
masks or keypoints the model trains but the data lacks; and datasets whose class names or order
differ from the first training set's. Otherwise it returns one summary per dataset, for the log.

Datasets registered some other way than from a COCO json (no ``json_file`` in their metadata) get
the class count and name checks only, and are listed as not checked.
"""
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from ..config_io import ConfigError
from .coco_facts import INVALID_POLYGON, CocoFacts, Tally, read_coco_facts
from .datasets import check_class_count

_SHOWN = 5  # missing files and differing classes named in a message


class Dataset(NamedTuple):
    name: str
    key: str  # the config key that names it, e.g. DATASETS.TRAIN or dataloader.train.dataset.names
    train: bool


@dataclass(frozen=True)
class Needs:
    """What the model asks of its data, and the config keys that say so (for messages)."""

    num_classes: Optional[int]
    max_bad_fraction: float
    max_bad_key: str  # e.g. "DATASETS.MAX_BAD_BOX_FRACTION" or "train.max_bad_box_fraction"
    assign: str = " "  # between key and value on the command line: " " (yacs) or "=" (LazyConfig)
    masks: bool = False
    masks_key: str = "MODEL.MASK_ON"
    masks_off: str = "set MODEL.MASK_ON False"  # how to train boxes only
    keypoints: bool = False
    keypoints_key: str = "MODEL.KEYPOINT_ON"
    keypoints_off: str = "set MODEL.KEYPOINT_ON False"
    classes_key: str = "MODEL.ROI_HEADS.NUM_CLASSES"
    teacher_opts_key: str = "MODEL.TEACHER.OPTS"


@dataclass(frozen=True)
class DatasetSummary:
    dataset: Dataset
    classes: Optional[Tuple[str, ...]]
    facts: Optional[CocoFacts]  # None: only its class count and names were checked, for ``unchecked``
    unchecked: str = ""

    def line(self) -> str:
        head = f"dataset {self.dataset.name!r} ({self.dataset.key})"
        facts = self.facts
        if facts is None:
            return f"{head}: class count and names checked; not its annotations or images ({self.unchecked})"
        dropped = [f"{t.count} {reason}" for reason, t in facts.dropped.items() if t.count]
        return (f"{head}, {facts.json_file}: {facts.num_images} images (all files present), {facts.num_annotations} "
                f"annotations, {len(facts.categories)} classes; {facts.usable} usable boxes; dropped by Detectron2: "
                f"{', '.join(dropped) or 'none'}; {facts.misplaced.count} with negative width or height (trained as "
                f"the mirrored box); {facts.clipped.count} clipped to the image; {facts.crowd.count} crowd (not "
                f"trained on); {facts.images_without_usable} images without a usable box")


def _example(tally: Tally) -> str:
    return f"e.g. annotation id {tally.example!r}"


def _where(dataset: Dataset, facts: CocoFacts) -> str:
    return f"{dataset.key}: dataset {dataset.name!r} ({facts.json_file})"


def _check_trainable(dataset: Dataset, facts: CocoFacts) -> None:
    where = _where(dataset, facts)
    if facts.num_annotations == 0:
        raise ConfigError(f"{where} has no annotations ('annotations' is empty): a training set needs boxes")
    if facts.usable:
        return
    if facts.crowd.count == facts.num_annotations:
        raise ConfigError(f"{where}: all {facts.num_annotations} annotations are iscrowd=1 ({_example(facts.crowd)}), "
                          "which Detectron2 never trains on: a training set needs annotations with iscrowd 0")
    dropped = [f"{t.count} {reason} ({_example(t)})" for reason, t in facts.dropped.items() if t.count]
    raise ConfigError(f"{where}: none of its {facts.num_annotations} annotations can be trained on: "
                      f"{', '.join(dropped)}, {facts.crowd.count} crowd; fix the boxes (bbox is [x, y, width, "
                      "height] in pixels of the image)")


def _check_bad_boxes(dataset: Dataset, facts: CocoFacts, needs: Needs) -> None:
    candidates = facts.num_annotations - facts.crowd.count
    bad = facts.bad_boxes()
    if not dataset.train:  # COCO evaluation reads the json itself: an invalid polygon leaves its box intact
        bad.pop(INVALID_POLYGON, None)
    count = sum(t.count for t in bad.values())
    if not candidates or count / candidates <= needs.max_bad_fraction:
        return
    fraction = count / candidates
    reasons = ", ".join(f"{t.count} {reason} ({_example(t)})" for reason, t in bad.items())
    what = (f"Detectron2 would drop or misplace {count} of its {candidates} boxes ({fraction:.1%}) in training"
            if dataset.train else f"{count} of its {candidates} boxes ({fraction:.1%}) are ground truth no detection "
                                  "can match")
    raise ConfigError(f"{_where(dataset, facts)}: {what}: {reasons}; that is above {needs.max_bad_key} "
                      f"{needs.max_bad_fraction}. Fix the boxes (bbox is [x, y, width, height] in pixels), or set "
                      f"{needs.max_bad_key}{needs.assign}{_ceil_fraction(fraction)} to accept them")


def _ceil_fraction(fraction: float) -> float:
    """A value of the threshold key that accepts ``fraction`` (rounded up to 3 decimals)."""
    return min(1.0, math.ceil(fraction * 1000) / 1000)


def _check_annotated_with(dataset: Dataset, facts: CocoFacts, missing: Tally, needed: bool, key: str,
                          what: str, fix: str) -> None:
    if needed and missing.count:
        raise ConfigError(f"{_where(dataset, facts)}: {key} is set, but {missing.count} of its {facts.num_annotations} "
                          f"annotations have no {what} ({_example(missing)}); {fix}")


def missing_files(image_root: str, file_names: Sequence[str]) -> List[str]:
    """The images of ``file_names`` (relative to ``image_root``, as Detectron2 joins them) that do
    not exist: one directory listing per folder, not a stat per file, so that 118k COCO images take
    well under a second on a local disk and one readdir per folder on a network file system."""
    by_folder = defaultdict(list)
    for file_name in file_names:
        path = os.path.join(image_root, file_name)
        by_folder[os.path.dirname(path)].append(path)
    missing = []
    for folder, paths in by_folder.items():
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        missing.extend(p for p in paths if os.path.basename(p) not in present)
    return missing


def _check_images(dataset: Dataset, facts: CocoFacts, image_root: str) -> None:
    missing = missing_files(image_root, facts.file_names)
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        raise ConfigError(f"{_where(dataset, facts)}: {len(missing)} of its {facts.num_images} image files are "
                          f"missing under {image_root}: {shown}; copy them there, or fix file_name in the json")


def first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} classes"
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"class {i} is {a[i]!r} vs {b[i]!r}"


def describe_classes(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    return f"[{shown}] ({len(names)})"


def check_same_classes(reference: Dataset, reference_classes: Sequence[str], dataset: Dataset,
                       classes: Sequence[str]) -> None:
    """A dataset evaluated or trained beside ``reference`` (the first training set) has its classes,
    in its order: class i of the model is class i of every dataset."""
    if tuple(classes) != tuple(reference_classes):
        raise ConfigError(
            f"{dataset.key}: dataset {dataset.name!r} has the classes {describe_classes(classes)}, but "
            f"{reference.key}'s {reference.name!r} has {describe_classes(reference_classes)} "
            f"({first_difference(classes, reference_classes)}): the model's class i is the i-th category (by id) "
            "of its training data, so its scores would be counted for other classes; use data with the same "
            "categories (names and id order)")


def _summarise(dataset: Dataset, needs: Needs, deep: bool) -> DatasetSummary:
    meta = MetadataCatalog.get(dataset.name)
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    facts = read_coco_facts(json_file, f"{dataset.key}: dataset {dataset.name!r}") if deep and json_file else None
    if facts is not None and meta.get("thing_classes") is None:
        # A plain register_coco_instances leaves them to the first load of the json; they are what
        # load_coco_json will set, and the class count and the teacher's classes are checked on them.
        meta.thing_classes = list(facts.categories)
    if needs.num_classes is not None:
        check_class_count(dataset.name, dataset.key, needs.num_classes, needs.classes_key, needs.teacher_opts_key)
    classes = meta.get("thing_classes")
    classes = tuple(classes) if classes is not None else None
    if facts is None:
        return DatasetSummary(dataset, classes, None,
                              "not registered from a COCO json" if deep else "this run does not read it")
    if dataset.train:
        _check_trainable(dataset, facts)
    _check_bad_boxes(dataset, facts, needs)
    _check_annotated_with(dataset, facts, facts.without_segmentation, needs.masks, needs.masks_key,
                          "segmentation", f"a mask head needs instance masks: {needs.masks_off} to train boxes only, "
                          "or use data with segmentation (polygons or RLE)")
    _check_annotated_with(dataset, facts, facts.without_keypoints, needs.keypoints, needs.keypoints_key, "keypoints",
                          f"a keypoint head needs keypoint annotations: {needs.keypoints_off}, or use data with them")
    if image_root:
        _check_images(dataset, facts, image_root)
    return DatasetSummary(dataset, classes, facts)


def check_data(datasets: Sequence[Dataset], needs: Needs, deep: Sequence[bool] = ()) -> List[DatasetSummary]:
    """Check every dataset (``deep[i]`` False: its class count and names only, e.g. the training sets
    of an evaluation) and return their summaries; raise ``ConfigError`` on the first problem. That each
    is registered and has its files is checked before (``datasets.check_dataset_*``)."""
    deep = list(deep) or [True] * len(datasets)
    summaries = [_summarise(d, needs, checked) for d, checked in zip(datasets, deep)]
    known = [s for s in summaries if s.classes is not None]
    reference = next((s for s in known if s.dataset.train), None)
    for summary in known if reference is not None else ():
        check_same_classes(reference.dataset, reference.classes, summary.dataset, summary.classes)
    return summaries
