"""What ``--eval-only`` evaluates, so that it never scores a model that was not trained: the weights
it is given, else the run's newest checkpoint, else nothing (refused before anything is built); and
weights that leave some of the model's parameters at their random initial values (a backbone-only
file, another model's checkpoint) are refused once loaded. An evaluation writes its config, log and
results below the run folder (``inference/``, the teacher's ``teacher_eval/``), never over the
run's own ``config.yaml``."""
import logging
import os
from typing import List

from ..config_io import ConfigError
from .checkpoint import AtomicCheckpointer, newest_readable_checkpoint

logger = logging.getLogger(__name__)
STUDENT_FOLDER = "inference"  # Detectron2's folder for the evaluators' output
TEACHER_FOLDER = "teacher_eval"
_LIST_AT_MOST = 5


def eval_folder(output_dir: str, teacher: bool = False) -> str:
    return os.path.join(output_dir, TEACHER_FOLDER if teacher else STUDENT_FOLDER)


def weights_to_evaluate(weights: str, weights_key: str, output_dir: str, output_key: str, resume: bool) -> str:
    """With ``resume`` the run's newest readable checkpoint, else ``weights``; with no ``weights``
    the newest checkpoint. ``ConfigError`` when there is neither."""
    newest = newest_readable_checkpoint(output_dir)
    if newest and (resume or not weights):
        return newest
    if weights:
        return weights
    raise ConfigError(f"--eval-only needs weights: {weights_key} is empty and {output_key} {output_dir!r} holds no "
                      f"checkpoint, so it would score a randomly initialised model; set {weights_key} to a trained "
                      "model's weights (e.g. a run's model_final.pth)")


def _shorten(names: List[str]) -> str:
    shown = ", ".join(names[:_LIST_AT_MOST])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LIST_AT_MOST else "")


def load_for_evaluation(model, path: str, key: str, output_dir: str) -> None:
    """Load ``path`` into ``model``; refuse it when it leaves parameters untrained."""
    logger.info("evaluating the weights %s (%s)", path, key)
    checkpointer = AtomicCheckpointer(model, save_dir=output_dir)
    checkpointer.load(path, checkpointables=[])
    missing = checkpointer.incompatible.missing_keys if checkpointer.incompatible else []
    parameters = dict(model.named_parameters())
    untrained = sorted(k for k in missing if k in parameters)
    if untrained:
        raise ConfigError(f"{key} {path!r} holds no weights for {len(untrained)} of the model's {len(parameters)} "
                          f"parameters ({_shorten(untrained)}), which would be scored at their random initial "
                          "values; give a trained detector's weights of this model (e.g. a run's model_final.pth)")
