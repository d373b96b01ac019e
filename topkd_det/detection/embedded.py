"""The embedded detection benchmark: distillation end to end with no download.

The project generates its synthetic shapes data (``topkd_det.data.synthetic_coco``), trains a teacher
once (cached, keyed on its config and the data), then trains the same student with each method on
the same budget and seed, and scores every run with COCO AP. ``tools/demo.py`` (``make demo``) and
``benchmarks/det_ablation.py`` are built on these functions.
"""
import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from ..data.synthetic_coco import SyntheticConfig, default_root, generate
from ..files import torch_file_problem, write_text_atomic
from .checkpoint import FINAL, AtomicCheckpointer
from .config import load_config
from .datasets import SYNTHETIC_PREFIX, register_synthetic
from .engine import DistillTrainer, check_datasets, student_only
from .validation import check_distill_config

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "embedded"
DATASET_PREFIX = "embedded_shapes"
logger = logging.getLogger("topkd_det.embedded")


@dataclass
class RunResult:
    name: str
    seed: int
    split: str
    AP: float
    AP50: float
    AP75: float
    train_seconds: float
    iterations: int
    output_dir: str


@dataclass(frozen=True)
class EmbeddedData:
    names: Dict[str, str]  # split -> registered dataset name
    fingerprint: str  # of the generator's parameters: part of every run's cache key


def prepare_data(root: Path, config: SyntheticConfig, progress: bool = True) -> EmbeddedData:
    """Generate (or reuse) the dataset under ``root`` and register its splits with Detectron2.

    At the default root the splits get the names configs/embedded uses (``synthetic_shapes_*``), so
    ``tools/train_net.py --config-file configs/embedded/...`` trains on what the demo generated."""
    generate(root, config, progress=progress)
    meta = (Path(root) / "meta.json").read_bytes()
    at_default = Path(root).resolve() == default_root().resolve()
    prefix = SYNTHETIC_PREFIX if at_default else DATASET_PREFIX
    return EmbeddedData(register_synthetic(root, name_prefix=prefix), hashlib.sha256(meta).hexdigest())


def size_opts(image_size: int) -> List:
    """Overrides that train and test every model at the generated image size."""
    return ["INPUT.MIN_SIZE_TRAIN", (image_size,), "INPUT.MAX_SIZE_TRAIN", image_size,
            "INPUT.MIN_SIZE_TEST", image_size, "INPUT.MAX_SIZE_TEST", image_size]


def _quiet_detectron2(log_file: Path) -> None:
    """Detectron2's INFO logs go to ``log_file``; the console keeps warnings, stage lines and bars."""
    setup_logger(str(log_file), distributed_rank=comm.get_rank(), name="detectron2")
    setup_logger(str(log_file), distributed_rank=comm.get_rank(), name="fvcore")
    for name in ("detectron2", "fvcore"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)


def _run_cfg(config_file: Path, output_dir: Path, data: EmbeddedData, seed: int, eval_split: str,
             opts: Sequence) -> CfgNode:
    cfg = load_config(config_file, opts)
    check_distill_config(cfg)
    cfg.DATASETS.TRAIN = (data.names["train"],)
    cfg.DATASETS.TEST = (data.names[eval_split],)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = seed
    cfg.freeze()
    check_datasets(cfg)
    return cfg


def _evaluate(cfg: CfgNode, model) -> Dict[str, float]:
    results = DistillTrainer.test(student_only(cfg), model)
    # Detectron2 reports NaN when a model makes no detection at all; COCO AP is then 0.
    return {k: float(np.nan_to_num(results["bbox"][k])) for k in ("AP", "AP50", "AP75")}


def train_and_evaluate(name: str, config_file: Path, output_dir: Path, data: EmbeddedData, seed: int = 0,
                       eval_split: str = "test", opts: Sequence = ()) -> RunResult:
    """Train one run and score it.

    A finished run with the same config, data and teacher weights is reused; an unfinished one with
    the same config resumes from its last checkpoint.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    _quiet_detectron2(output_dir / "log.txt")
    cfg = _run_cfg(config_file, output_dir, data, seed, eval_split, opts)
    result_file = output_dir / f"result_{eval_split}.json"
    key = _cache_key(cfg, data)
    final = output_dir / FINAL
    if result_file.is_file():
        cached = json.loads(result_file.read_text())
        problem = torch_file_problem(str(final))
        if cached.get("config_sha256") == key and problem is None:
            logger.info("reusing finished run %s", output_dir)
            return RunResult(**cached["result"])
        if problem is not None:
            logger.warning("%s %s: training the run again", final, problem)
    config_file = output_dir / "config.yaml"
    resume = config_file.is_file() and config_file.read_text() == cfg.dump()
    write_text_atomic(str(config_file), cfg.dump())
    seed_all_rng(seed)
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    metrics = _evaluate(cfg, trainer.model)
    result = RunResult(name=name, seed=seed, split=eval_split, train_seconds=seconds, iterations=cfg.SOLVER.MAX_ITER,
                       output_dir=str(output_dir), **metrics)
    write_text_atomic(str(result_file), json.dumps({"config_sha256": key, "result": asdict(result)}, indent=1))
    return result


@dataclass(frozen=True)
class Job:
    """One ``train_and_evaluate`` call, picklable for a worker process."""
    name: str
    config_file: Path
    output_dir: Path
    seed: int
    eval_split: str
    opts: Tuple = ()


def _last_iteration(output_dir: Path) -> int:
    """Progress of a run from Detectron2's metrics.json (one JSON line per 20 iterations)."""
    try:
        lines = (output_dir / "metrics.json").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("iteration", -1)) + 1
        except ValueError:
            continue
    return 0


def iterations_done(output_dir: Path, max_iter: int) -> int:
    """A running job's progress for the bar: its folder's metrics.json may hold lines of an earlier,
    longer run, so never more than its own length."""
    return min(_last_iteration(output_dir), max_iter)


def _worker_init(threads: int) -> None:
    os.environ["TQDM_DISABLE"] = "1"  # the parent draws one bar for all runs
    import torch

    torch.set_num_threads(threads)


def _worker_run(job: Job, data_root: Path, data_config: SyntheticConfig) -> RunResult:
    data = prepare_data(data_root, data_config, progress=False)
    return train_and_evaluate(job.name, job.config_file, job.output_dir, data, job.seed, job.eval_split, job.opts)


def run_jobs(jobs: Sequence[Job], data_root: Path, data_config: SyntheticConfig, workers: int = 2,
             on_result=None) -> List[RunResult]:
    """Run the jobs in ``workers`` processes with one thread each, which on a 2-core CPU trains
    about 1.5x more iterations per second than one process on two threads. A single bar shows the
    iterations of all runs; ``on_result(job, result)`` is called as each run finishes."""
    lengths = [load_config(j.config_file, j.opts).SOLVER.MAX_ITER for j in jobs]
    results: Dict[int, RunResult] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(1,)) as pool, \
            tqdm(total=sum(lengths), desc=f"{len(jobs)} runs", unit="it", dynamic_ncols=True) as bar:
        futures = {pool.submit(_worker_run, job, data_root, data_config): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for future in finished:
                i = futures[future]
                results[i] = future.result()
                if on_result:
                    on_result(jobs[i], results[i])
            bar.n = sum(lengths[i] if i in results else iterations_done(j.output_dir, lengths[i])
                        for i, j in enumerate(jobs))
            bar.refresh()
    return [results[i] for i in range(len(jobs))]


def _cache_key(cfg: CfgNode, data: EmbeddedData) -> str:
    h = hashlib.sha256(cfg.dump().encode())
    h.update(data.fingerprint.encode())
    teacher = cfg.MODEL.TEACHER.WEIGHTS
    if cfg.MODEL.META_ARCHITECTURE == "DistillRCNN" and os.path.isfile(teacher):
        h.update(hashlib.sha256(Path(teacher).read_bytes()).hexdigest().encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TrainedTeacher:
    config_file: Path  # the run's full dumped config, so overrides given to the run reach the students
    weights: Path
    train_seconds: float

    def student_opts(self) -> List[str]:
        """The ``MODEL.TEACHER.*`` overrides that point a student at this teacher."""
        return ["MODEL.TEACHER.CONFIG_FILE", str(self.config_file), "MODEL.TEACHER.WEIGHTS", str(self.weights)]


def train_teacher(output_dir: Path, data: EmbeddedData, config_file: Optional[Path] = None,
                  seed: int = 0, opts: Sequence = ()) -> TrainedTeacher:
    """Train the teacher unless a run with the same config and data already finished."""
    config_file = config_file or CONFIG_DIR / "teacher.yaml"
    result = train_and_evaluate("teacher", config_file, output_dir, data, seed, "val", opts)
    run = Path(result.output_dir)
    return TrainedTeacher(run / "config.yaml", run / "model_final.pth", result.train_seconds)


def evaluate_teacher(teacher: TrainedTeacher, data: EmbeddedData, split: str) -> Dict[str, float]:
    """COCO AP/AP50/AP75 of the trained teacher on one split."""
    cfg = student_only(_run_cfg(teacher.config_file, teacher.weights.parent, data, 0, split, ()))
    weights = teacher.weights
    model = DistillTrainer.build_model(cfg)
    AtomicCheckpointer(model).load(str(weights))
    return _evaluate(cfg, model)


def results_by_row(results: List[RunResult]) -> Dict[str, List[RunResult]]:
    rows: Dict[str, List[RunResult]] = {}
    for r in results:
        rows.setdefault(r.name, []).append(r)
    return rows
