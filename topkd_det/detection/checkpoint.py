"""Detection checkpoints that a kill cannot corrupt, and a resume that finds the newest good one.

``AtomicCheckpointer`` is Detectron2's ``DetectionCheckpointer`` with fvcore's public methods
overridden (``save``, ``tag_last_checkpoint``, ``has_checkpoint``, ``get_checkpoint_file``, ``load``);
nothing private of Detectron2 or fvcore is called, so it behaves the same on Detectron2 0.6 and main:

- ``save`` writes ``<name>.pth.tmp.<pid>``, flushes it and renames it over ``<name>.pth``, and only
  then rewrites ``last_checkpoint`` (itself atomically). A kill leaves the previous checkpoint and
  its tag intact, plus an orphan temp file that the next start removes.
- ``get_checkpoint_file`` checks the tagged checkpoint (a complete zip whose CRCs hold) and, if it is
  damaged, says so and falls back to the newest readable ``model_final.pth`` / ``model_<iter>.pth``.
- ``load`` turns a damaged or foreign file into one ``CheckpointError`` naming it and the fix.
"""
import os
import re
from typing import Any, Callable, Dict, List, Optional

from detectron2.checkpoint import DetectionCheckpointer

from ..files import (LOAD_ERRORS, first_readable_checkpoint, save_atomic, torch_file_problem, unreadable_reason,
                     write_text_atomic)

LAST_CHECKPOINT_TAG = "last_checkpoint"  # fvcore's name for the file holding the newest checkpoint's name
FINAL = "model_final.pth"
_PERIODIC = re.compile(r"model_(\d+)\.pth$")


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used."""


def checkpoint_files(save_dir: str) -> List[str]:
    """The run's checkpoints, newest first: ``model_final.pth``, then ``model_<iter>.pth`` by iteration."""
    if not os.path.isdir(save_dir):
        return []
    names = os.listdir(save_dir)
    periodic = sorted(((int(m.group(1)), n) for n in names if (m := _PERIODIC.match(n))), reverse=True)
    ordered = ([FINAL] if FINAL in names else []) + [n for _, n in periodic]
    return [os.path.join(save_dir, n) for n in ordered]


def _tagged(save_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(save_dir, LAST_CHECKPOINT_TAG)) as f:
            name = f.read().strip()
    except OSError:
        return None
    return os.path.join(save_dir, name) if name else None


def newest_readable_checkpoint(save_dir: str) -> Optional[str]:
    """The checkpoint a resume should load: the tagged one if it is intact, else the newest intact one.

    None when the folder holds no checkpoint. Raises ``CheckpointError`` when it holds some but none
    is readable, rather than silently starting over.
    """
    tagged = _tagged(save_dir)
    candidates = ([tagged] if tagged else []) + [p for p in checkpoint_files(save_dir) if p != tagged]
    return first_readable_checkpoint(candidates, CheckpointError, "Train from scratch without --resume (after "
                                     "moving these files away), or use another OUTPUT_DIR")


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic writes and a resume that skips damaged files.

    ``extra_state`` (optional) returns more data for every checkpoint it writes (the trainer stores
    its config, RNG states and accepted config changes this way). ``incompatible`` holds the keys of
    the last load that did not fit the model (fvcore's ``_IncompatibleKeys``).
    """

    incompatible = None

    def __init__(self, model, save_dir: str = "", *, extra_state: Optional[Callable[[], Dict[str, Any]]] = None,
                 **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.extra_state = extra_state

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(self.extra_state() if self.extra_state else {})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        save_atomic(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        write_text_atomic(os.path.join(self.save_dir, LAST_CHECKPOINT_TAG), last_filename_basename)

    def has_checkpoint(self) -> bool:
        # A kill between a checkpoint's rename and its tag leaves a checkpoint without a tag.
        return super().has_checkpoint() or bool(checkpoint_files(self.save_dir))

    def get_checkpoint_file(self) -> str:
        return newest_readable_checkpoint(self.save_dir) or ""

    def _load_model(self, checkpoint):
        # The hook fvcore's Checkpointer documents for subclasses; it only logs what did not fit.
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"checkpoint or weights file {path!r} does not exist (relative paths are from "
                                  f"{os.getcwd()!r})")
        try:
            return super().load(path, *args, **kwargs)
        except LOAD_ERRORS as err:
            # Loading also fits the weights into the model: only a problem of the file itself is reported
            # as one (an intact zip checkpoint cannot have one).
            intact_zip = path and os.path.isfile(path) and torch_file_problem(path) is None
            if not path or not os.path.isfile(path) or intact_zip:
                raise
            raise CheckpointError(
                f"checkpoint or weights file {path!r} {unreadable_reason(path, err)}: download or copy it again "
                "(a converted backbone: run tools/convert_torchvision_to_d2.py again), or retrain the run that "
                "wrote it; a run's own checkpoints are resumed with --resume, which skips damaged ones"
            ) from None
