"""Detection runs of a comparison: a Detectron2 YAML config (``tools/train_net.py``'s path) or a
LazyConfig ``.py`` file (``tools/lazyconfig_train_net.py``'s path), on any registered data: the embedded
shapes, COCO, or a user's COCO-format data (``DATASETS.COCO_INSTANCES`` or registered in a lazy config).

Pairing. The seed is ``SEED`` (YAML) or ``train.seed`` (lazy): every RNG is seeded with it before the
model is built, as Detectron2's ``default_setup`` does, so a seed gives every row the same student
initialisation (the teacher is built without drawing from the RNGs, see ``teacher.build_teacher``), and
it seeds the training sampler, so every row sees the same images in the same order.

Metric. The *final* model is scored (COCO box AP, AP50, AP75 on the config's one test dataset): there is
no selection over checkpoints, so the test split is never used to choose anything.
"""
import json
import logging
import os
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
from detectron2.config import CfgNode, LazyConfig
from detectron2.data import MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf

from ..config_io import ConfigError
from ..detection import engine, lazy_engine
from ..detection.checkpoint import newest_readable_checkpoint
from ..detection.resume import peek_checkpoint, run_fingerprint
from ..files import write_text_atomic
from .runs import Row, RunResult, RunSpec, run_dir, run_key

TASK = "detection"
METRICS = ("AP", "AP50", "AP75")
PRIMARY_METRIC = "AP"
STEP_UNIT = "iteration"
SELECTION = "final model"


def is_lazy(config: str) -> bool:
    return str(config).endswith(".py")


def _seed_opts(config: str, seed: int) -> List[Any]:
    return [f"train.seed={seed}"] if is_lazy(config) else ["SEED", seed]


def _output_opts(config: str, output_dir: str) -> List[Any]:
    return [f"train.output_dir={output_dir}"] if is_lazy(config) else ["OUTPUT_DIR", output_dir]


def _test_datasets(cfg, lazy: bool) -> List[str]:
    if lazy:
        names = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
        return [names] if isinstance(names, str) else list(names or [])
    return list(cfg.DATASETS.TEST)


def _train_datasets(cfg, lazy: bool) -> List[str]:
    if lazy:
        names = OmegaConf.select(cfg, "dataloader.train.dataset.names", default=None)
        return [names] if isinstance(names, str) else list(names or [])
    return list(cfg.DATASETS.TRAIN)


def load_checked(config: str, opts: Sequence[Any]):
    """The run's config with every check the training tools run before any work (keys, loss options,
    datasets registered and present, the teacher's config)."""
    if is_lazy(config):
        return lazy_engine.check(config, [str(o) for o in opts])
    return engine.check_cfg(config, list(opts))


def plan(row: Row, seed: int, root: Path) -> RunSpec:
    opts = [*row.opts, *_seed_opts(row.config, seed)]
    lazy = is_lazy(row.config)
    cfg = load_checked(row.config, opts)
    key_name = "DATASETS.TEST" if not lazy else "dataloader.test.dataset.names"
    tests = _test_datasets(cfg, lazy)
    if len(tests) != 1:
        raise ConfigError(f"row {row.name!r}: {key_name} names {len(tests)} datasets ({', '.join(tests) or 'none'}); "
                          f"a comparison scores every run on one: override {key_name} with the one to compare on")
    if lazy:
        fingerprint = lazy_engine.run_fingerprint(cfg)
        fingerprint.pop("train.output_dir", None)
        length = int(cfg.train.max_iter)
        method = (OmegaConf.select(cfg, "model.distill_loss.options.method", default="none")
                  if "teacher" in cfg.model else "none")
    else:
        fingerprint = run_fingerprint(cfg)
        fingerprint.pop("OUTPUT_DIR", None)
        length = int(cfg.SOLVER.MAX_ITER)
        method = cfg.MODEL.DISTILL.METHOD if cfg.MODEL.META_ARCHITECTURE == "DistillRCNN" else "none"
    files = [MetadataCatalog.get(name).get("json_file", "") for name in _train_datasets(cfg, lazy) + tests]
    files.append(cfg.train.init_checkpoint if lazy else cfg.MODEL.WEIGHTS)  # initial weights, when a local file
    key = run_key(TASK, fingerprint, [f for f in files if f and os.path.isfile(f)])
    output_dir = run_dir(root, row.name, seed, key)
    return RunSpec(TASK, row.name, seed, str(row.config), tuple(opts + _output_opts(row.config, output_dir)),
                   output_dir, key, length, str(method))


def quiet_detectron2(log_file: str) -> None:
    """Detectron2's INFO logs go to ``log_file``; the console keeps warnings and the bars."""
    for name in ("detectron2", "fvcore"):
        setup_logger(log_file, distributed_rank=comm.get_rank(), name=name)
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)


def _dump_config(cfg, path: str) -> None:
    """The run's full config, as Detectron2's ``default_setup`` writes it (a teacher can be built from it)."""
    if comm.is_main_process():
        if isinstance(cfg, CfgNode):
            write_text_atomic(path, cfg.dump())
        else:
            LazyConfig.save(cfg, path)


def _box_metrics(results: Dict) -> Dict[str, float]:
    # Detectron2 reports NaN when a model makes no detection at all; COCO AP is then 0.
    return {k: float(np.nan_to_num(results["bbox"][k])) for k in METRICS}


def execute(spec: RunSpec) -> RunResult:
    quiet_detectron2(os.path.join(spec.output_dir, "log.txt"))
    cfg = load_checked(spec.config, spec.opts)
    _dump_config(cfg, os.path.join(spec.output_dir, "config.yaml"))
    seed_all_rng(spec.seed + comm.get_rank())  # what default_setup does with SEED / train.seed
    # pycocotools prints its summary tables: into the run's folder, not between the progress lines.
    with open(os.path.join(spec.output_dir, "stdout.txt"), "a", encoding="utf-8") as out, redirect_stdout(out):
        start = time.perf_counter()
        if is_lazy(spec.config):
            start_iter = _iterations_checkpointed(spec.output_dir)
            lazy_engine.train(cfg, resume=True)
            seconds = time.perf_counter() - start
            results = lazy_engine.evaluate_student(cfg, resume=True)
        else:
            trainer = engine.DistillTrainer(cfg)
            trainer.resume_or_load(resume=True)
            start_iter = trainer.start_iter
            results = trainer.train()  # the final model's, when TEST.EVAL_PERIOD evaluated it at the end
            seconds = time.perf_counter() - start
            if not results:
                results = engine.DistillTrainer.test(engine.student_only(cfg), trainer.model)
    return RunResult(spec.row, spec.seed, _box_metrics(results), seconds, max(spec.length - start_iter, 0), STEP_UNIT,
                     spec.output_dir, SELECTION)


def _iterations_checkpointed(output_dir: str) -> int:
    """Where a run resumes: the iteration after its newest checkpoint (0 without one)."""
    path = newest_readable_checkpoint(output_dir)
    return peek_checkpoint(path).get("iteration", -1) + 1 if path else 0


def iterations_done(output_dir: str, max_iter: int) -> int:
    """A running job's iterations from Detectron2's metrics.json (one JSON line per log period),
    never more than its length."""
    try:
        lines = Path(output_dir, "metrics.json").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return min(int(json.loads(line).get("iteration", -1)) + 1, max_iter)
        except ValueError:
            continue
    return 0


def progress(spec: RunSpec) -> float:
    return iterations_done(spec.output_dir, spec.length) / max(spec.length, 1)
