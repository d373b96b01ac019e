"""Resuming a detection run safely: the run's own config, its data order, its random state.

``ResumableTrainer`` is a mixin for a ``DefaultTrainer`` subclass (``class T(ResumableTrainer,
DefaultTrainer)``). It only overrides what ``DefaultTrainer`` documents for overriding
(``build_hooks``, ``build_train_loader``, ``resume_or_load``, ``train``) and uses its documented
``checkpointer`` attribute:

- checkpoints are written by ``AtomicCheckpointer`` and carry the config, the teacher weights'
  digest and the RNG states;
- ``--resume`` compares the checkpoint's config with the current one (``topkd_det.resume_rules``) and
  refuses result-changing differences unless ``allow_config_change`` is set, which records them in
  the log and in ``metrics.json``;
- a run whose newest checkpoint is its last iteration but whose ``model_final.pth`` is missing or
  damaged writes ``model_final.pth`` again instead of passing for finished;
- the training data continue where the checkpoint stopped (below);
- in several processes, rank 0 picks the checkpoint and every rank loads that file, restores its own
  RNG states, and a resume with another number of processes is refused like a config change.

Data order. Detectron2's ``TrainingSampler`` is an infinite stream of per-epoch permutations seeded
once; a restarted process starts the stream again, so a resumed run would see the first images of
the stream a second time. Here the stream is seeded with ``SEED`` (when >= 0) and each process skips
the ``start_iter × IMS_PER_BATCH / world`` indices its batches took before the checkpoint. The loader
is built when the first batch is drawn, the moment ``start_iter`` is known (0.6 creates the loader's
iterator in the trainer's constructor, before ``resume_or_load``). With aspect-ratio grouping,
images waiting in a bucket at the checkpoint are not in any batch yet; when a dataset mixes
orientations (COCO), up to 2·B − 2 images per process near the resume point are trained twice or
not at all. Everything else about what is bit-exact is in docs/resume_and_errors.md ("Resuming a run").
"""
import functools
import json
import logging
import os
from itertools import islice
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.utils.data import Sampler

from ..files import file_sha256, remove_orphans, torch_file_problem
from ..resume_rules import Change, ResumeRules, check_resume, flatten
from ..rng import set_rng_state
from ..state_dicts import mismatch
from .checkpoint import FINAL, AtomicCheckpointer, CheckpointError, newest_readable_checkpoint
from .class_names import classes_entry
from .replicas import ReplicaSync, insert_before_readers

logger = logging.getLogger(__name__)

# Keys that only decide where and how often files are written, what evaluation runs on and what the
# checks before a run accept; changing them does not change the trained weights. MODEL.WEIGHTS is what
# a run starts from: a resume loads its checkpoint instead (an evaluation sets MODEL.WEIGHTS to it).
RESUME_RULES = ResumeRules("SOLVER.MAX_ITER", ("OUTPUT_DIR", "SOLVER.CHECKPOINT_PERIOD", "VIS_PERIOD", "TEST.",
                                               "DATASETS.TEST", "MODEL.WEIGHTS", "DATASETS.MAX_BAD_BOX_FRACTION",
                                               "MODEL.TEACHER.ALLOW_OTHER_CLASSES"), "iterations")
TEACHER_DIGEST = "MODEL.TEACHER.WEIGHTS (sha256)"
# The number of processes is part of what identifies a run: each rank has its own share of every
# batch and its own random state, so another count trains another run. Checkpoints store it as
# ``world_size``; it is compared like a config key (refused on resume, unless --allow-config-change).
PROCESSES = "processes (--num-gpus x --num-machines)"


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def teacher_digest(weights: Optional[str]) -> Dict[str, str]:
    """``{TEACHER_DIGEST: sha256}`` of a local teacher weights file (a teacher retrained at the same
    path makes another run); nothing for a URL or no file."""
    if not weights or not os.path.isfile(weights):
        return {}
    stat = os.stat(weights)
    return {TEACHER_DIGEST: _digest(os.path.abspath(weights), stat.st_size, stat.st_mtime_ns)}


def run_fingerprint(cfg: CfgNode, world_size: Optional[int] = None) -> Dict[str, Any]:
    """What identifies a run: its flattened config, the content of a local teacher weights file, and
    its number of processes (default: this process group's)."""
    out = flatten(cfg.dump())
    if cfg.MODEL.META_ARCHITECTURE == "DistillRCNN":
        out.update(teacher_digest(cfg.MODEL.TEACHER.WEIGHTS))
    out[PROCESSES] = world_size or comm.get_world_size()
    return out


def _defaults() -> Dict[str, Any]:
    from .config import add_topkd_config

    cfg = get_cfg()
    add_topkd_config(cfg)
    return flatten(cfg.dump())


def stored_fingerprint(state: Dict[str, Any], current: Dict[str, Any]):
    """(stored, current) as ``check_resume`` compares them; stored is None without a stored config."""
    if "config" not in state:
        return None, current
    stored = {**flatten(state["config"]), **state.get("fingerprints", {})}
    if "world_size" in state:
        stored[PROCESSES] = state["world_size"]
    # Fingerprints a checkpoint predates are not compared.
    current = {k: v for k, v in current.items() if k not in (TEACHER_DIGEST, PROCESSES) or k in stored}
    return stored, current


def peek_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint's small entries and its model tensors, without reading them (memory-mapped)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: state[k] for k in ("config", "fingerprints", "iteration", "model", "world_size") if k in state}


def check_resume_config(cfg: CfgNode, allow_change: bool = False, world_size: Optional[int] = None) -> List[Change]:
    """Before anything is built: refuse (``ResumeRefused``) to resume OUTPUT_DIR's run under a config
    (or a number of processes, ``world_size``, default this process group's) that changes the result.
    Returns the accepted changes; nothing when there is no checkpoint."""
    path = newest_readable_checkpoint(cfg.OUTPUT_DIR)
    if path is None:
        return []
    state = peek_checkpoint(path)
    world_size = world_size or comm.get_world_size()
    effective = DefaultTrainer.auto_scale_workers(cfg, world_size)
    stored, current = stored_fingerprint(state, run_fingerprint(effective, world_size))
    return check_resume(stored, current, RESUME_RULES, state.get("iteration", -1) + 1, path, allow_change,
                        _defaults())


# --- data order --------------------------------------------------------------------------------------
class ContinuingSampler(Sampler):
    """A process's share of an infinite sampler's stream, minus the first ``skip`` indices."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return islice(iter(self.base), self.skip, None)


def _current_iteration() -> int:
    try:
        return get_event_storage().iter
    except AssertionError:  # drawn outside a training loop: from the start
        return 0


class DeferredLoader:
    """An iterable of batches whose loader is built when the first batch is drawn, from the
    iteration the training loop is at then."""

    def __init__(self, build: Callable[[int], Any]):
        self.build = build

    def __iter__(self):
        batches = iter(self.build(_current_iteration()))
        # Starting a torch DataLoader draws a seed from torch's global RNG; keeping that draw out of
        # the training stream makes a resumed run draw what an uninterrupted one draws.
        with torch.random.fork_rng(devices=[]):
            first = next(batches)
        yield first
        yield from batches


def continuing_train_loader(cfg: CfgNode):
    """Detectron2's default train loader (same dataset, mapper, grouping and workers) whose sampler
    continues where the checkpoint stopped. Only ``TrainingSampler`` can be continued; other samplers
    get Detectron2's loader, whose stream restarts on resume (logged)."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logger.warning("DATALOADER.SAMPLER_TRAIN %s: a resumed run restarts its data stream",
                       cfg.DATALOADER.SAMPLER_TRAIN)
        return DefaultTrainer.build_train_loader(cfg)
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    mapper = DatasetMapper(cfg, True)
    seed = cfg.SEED if cfg.SEED >= 0 else None  # None: Detectron2's random seed shared by the processes
    per_process = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()

    def build(start_iter: int):
        sampler = ContinuingSampler(TrainingSampler(len(dataset), seed=seed), start_iter * per_process)
        return build_detection_train_loader(
            dataset, mapper=mapper, sampler=sampler, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING, num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    return DeferredLoader(build)


def restore_rng(extra: Dict[str, Any]) -> None:
    """This rank's RNG states from a checkpoint of a run with as many processes (every rank's are
    stored, in rank order; checkpoints written before held the main process's alone, as a dict)."""
    world, states = comm.get_world_size(), extra.get("rng")
    if isinstance(states, dict):
        states = [states] if extra.get("world_size", 1) == 1 else None
    if states is not None and extra.get("world_size") == world == len(states):
        set_rng_state(states[comm.get_rank()])
    elif states is not None:
        logger.warning("the checkpoint holds the RNG states of %s process(es), this run has %d: they are not "
                       "restored, so its random draws differ from an uninterrupted run's", len(states), world)


def record_changes(output_dir: str, start_iter: int, changes: List[Change]) -> Dict[str, Any]:
    """Config changes accepted with --allow-config-change, as a record appended to ``metrics.json``
    (and returned, for the checkpoints' history)."""
    record = {"iteration": start_iter - 1, "config_changes": {c.key: [c.old, c.new] for c in changes}}
    if comm.is_main_process():
        with open(os.path.join(output_dir, "metrics.json"), "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


def rewrite_unreadable_final(checkpointer, output_dir: str, iteration: int, max_iter: int) -> None:
    """A run resumed at its end whose ``model_final.pth`` is missing or damaged writes it again (the
    uninterrupted run would have written it from exactly this state) instead of passing for finished."""
    final = os.path.join(output_dir, FINAL)
    if iteration + 1 >= max_iter and comm.is_main_process():
        problem = torch_file_problem(final)
        if problem is not None:
            logger.warning("%s %s although the run reached iteration %d: writing it again", final, problem, max_iter)
            checkpointer.save("model_final", iteration=iteration)


class Resumed(NamedTuple):
    extra: Dict[str, Any]  # what the checkpoint held besides the model and checkpointables
    config_changes: List[Dict[str, Any]]  # the run's accepted config changes, this resume's included


def resume_from(checkpointer, output_dir: str, fingerprint: Dict[str, Any], rules: ResumeRules,
                allow_change: bool, defaults: Optional[Dict[str, Any]], resume: bool = True) -> Optional[Resumed]:
    """Remove a killed run's orphan temp files, then (with ``resume``) load the newest readable
    checkpoint of ``output_dir`` once its config agrees with ``fingerprint`` under ``rules`` and its
    weights fit the model exactly; restore the RNG states and record accepted changes. None when there
    is nothing to resume."""
    if comm.is_main_process() and os.path.isdir(output_dir):
        for path in remove_orphans(output_dir):
            logger.warning("removed %s, left by a run killed while writing it", path)
    # Rank 0 picks the file and every rank loads it: each looking for itself could see another newest
    # file on a shared folder that is being written.
    path = newest_readable_checkpoint(output_dir) if resume and comm.is_main_process() else None
    if comm.get_world_size() > 1:
        path = comm.all_gather(path)[0]
    if path is None:
        return None
    state = peek_checkpoint(path)
    stored, current = stored_fingerprint(state, fingerprint)
    changes = check_resume(stored, current, rules, state.get("iteration", -1) + 1, path, allow_change, defaults)
    # Detectron2 loads a checkpoint non-strictly (a log line per mismatch); a run's own must fit.
    problem = mismatch(checkpointer.model.state_dict(), state.get("model", {}))
    if problem:
        raise CheckpointError(f"{path} does not fit the model of this config: {problem}")
    extra = checkpointer.load(path)
    restore_rng(extra)
    history = list(extra.get("config_changes", []))
    if changes:
        history.append(record_changes(output_dir, extra.get("iteration", -1) + 1, changes))
    return Resumed(extra, history)


# --- the trainer mixin -------------------------------------------------------------------------------
class ResumableTrainer:
    """Mixin for ``DefaultTrainer`` subclasses; see the module docstring."""

    # Set before resume_or_load to accept config changes (tools: --allow-config-change).
    allow_config_change = False

    @classmethod
    def build_train_loader(cls, cfg):
        return continuing_train_loader(cfg)

    def build_hooks(self):
        self.fingerprint = run_fingerprint(self.cfg)
        self.config_changes: List[Dict[str, Any]] = []
        old = self.checkpointer
        self.checkpointer = AtomicCheckpointer(old.model, old.save_dir, extra_state=self._checkpoint_state,
                                               **old.checkpointables)
        self.replica_sync = ReplicaSync(self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.TEST.EVAL_PERIOD, self.max_iter)
        return insert_before_readers(super().build_hooks(), self.replica_sync)

    def _checkpoint_state(self) -> Dict[str, Any]:
        return {
            "config": self.cfg.dump(),
            "fingerprints": {k: v for k, v in self.fingerprint.items() if k == TEACHER_DIGEST},
            "config_changes": self.config_changes,
            "rng": self.replica_sync.rng_states_for_checkpoint(),
            "world_size": comm.get_world_size(),
            **classes_entry(self.cfg.DATASETS.TRAIN),
        }

    def resume_or_load(self, resume=True):
        """As ``DefaultTrainer.resume_or_load``, from the newest readable checkpoint, after checking its
        config; orphan temp files of a killed run are removed first."""
        loaded = resume_from(self.checkpointer, self.cfg.OUTPUT_DIR, self.fingerprint, RESUME_RULES,
                             self.allow_config_change, _defaults(), resume)
        if loaded is None:
            self.checkpointer.load(self.cfg.MODEL.WEIGHTS, checkpointables=[])
            return
        # The checkpoint holds the iteration that just finished.
        self.start_iter = self.iter + 1
        self.config_changes = loaded.config_changes
        if self.cfg.SEED < 0:
            logger.warning("SEED %d: the data order after this resume is a new random one; set SEED >= 0 "
                           "for a run that continues its order", self.cfg.SEED)

    def train(self):
        if self.start_iter >= self.max_iter:
            self.replica_sync.sync()  # on every rank: the final checkpoint may be written again below
            rewrite_unreadable_final(self.checkpointer, self.cfg.OUTPUT_DIR, self.iter, self.max_iter)
        return super().train()
