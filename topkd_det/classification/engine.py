"""The classification trainer: SGD with a multi-step LR or AdamW with a warmup-cosine LR (optim.py), the
loss warmup, AMP, DDP, atomic checkpoints with exact resume, and logging to metrics.jsonl, TensorBoard and
a progress bar. Each step runs either through a DataLoader (``TrainStep``) or, with ``FAST_PATH``, on
data held on the device in a compiled, CUDA-graph-captured step (fast.py); the rest is the same.

Exact resume: each epoch's data order comes from (SEED, epoch) through ``DistributedSampler``, and the
checkpoint written after every epoch holds every RNG the next epoch draws from (augmentation, dropout,
loss subsampling). So a run killed at any point and resumed with ``--resume`` continues from the last
completed epoch and ends with the same weights as an uninterrupted run (same process count, same
device; docs/resume_and_errors.md lists the limits). The checkpoint also stores the config: a resume under a config
that would change the result is refused (``topkd_det.resume_rules``). ``metrics.jsonl`` is
append-only: lines a killed run wrote after its last checkpoint are written again after resuming
(take the last line per epoch).
"""
import contextlib
import json
import logging
import os
import re
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from ..files import file_sha256, first_readable_checkpoint, remove_orphans, save_atomic, write_text_atomic
from ..resume_rules import ResumeRules, check_resume, flatten
from ..rng import rng_state, seed_everything, set_rng_state
from .checkpoint import WeightsError, check_fits, load_file
from .config import get_cls_cfg, is_distillation
from .data import AugmentationPlan, CropFlip, TensorImages, build_splits, collate_batch, describe
from .distiller import Distiller, build_distill_loss, build_student, build_teacher
from .fast import DeviceBatches, FastStep, use_fast_path
from .metrics import Meters, topk_correct
from .optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pth"
RESULTS_FILE = "results.json"
_NUMBERED = re.compile(r"ckpt_epoch_(\d+)\.pth$")
# Where, how often and how big evaluation batches are: changing these does not change the trained model.
RESUME_RULES = ResumeRules("SOLVER.EPOCHS", ("OUTPUT_DIR", "LOG.", "CHECKPOINT_PERIOD", "TEST.BATCH_SIZE",
                                             "TEST.EVAL_TEACHER"), "epochs")
TEACHER_DIGEST = "MODEL.TEACHER_WEIGHTS (sha256)"


# --- processes -------------------------------------------------------------------------------------
class Env(NamedTuple):
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Env:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Env(rank, dist.get_world_size() if dist.is_initialized() else 1, device)


def _barrier(env: Env) -> None:
    if env.world > 1:
        dist.barrier()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, env: Env, autocast) -> Dict[str, float]:
    """Top-1/top-5 (%) and mean CE over the loader's data, summed over the ranks' disjoint shards."""
    was_training = model.training
    model.eval()
    meters = Meters()
    for x, y in loader:
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        with autocast():
            logits = model(x)
        logits = logits.float()
        meters.add(len(y), loss=nn.functional.cross_entropy(logits, y), **topk_correct(logits, y))
    model.train(was_training)
    return meters.reduce(env)


# --- data loaders ----------------------------------------------------------------------------------
def _loader(dataset: Dataset, batch_size: int, workers: int, sampler=None) -> DataLoader:
    # Workers are not persistent: each epoch's workers are seeded from the global RNG, which the
    # checkpoint restores, so augmentation after a resume is the same as without the kill.
    batched = isinstance(dataset, (TensorImages, AugmentationPlan))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        collate_fn=collate_batch if batched else None,
        pin_memory=torch.cuda.is_available() and not isinstance(dataset, AugmentationPlan),
    )


def _shard(dataset: Dataset, env: Env) -> Dataset:
    """Rank r evaluates items r, r+W, ...: disjoint and complete, unlike DistributedSampler's padding."""
    if env.world == 1:
        return dataset
    indices = torch.arange(env.rank, len(dataset), env.world)
    return dataset.view(indices) if isinstance(dataset, TensorImages) else Subset(dataset, indices.tolist())


# --- trainer ---------------------------------------------------------------------------------------
class TrainStep:
    """One optimisation step on a batch: the distiller under autocast (``AMP.*``), backward through the
    grad scaler (active for float16 only), the optimizer step. ``Trainer`` runs it on every batch;
    benchmarks time it on its own."""

    def __init__(self, distiller: nn.Module, optimizer: torch.optim.Optimizer, device_type: str,
                 amp_enabled: bool, amp_dtype: str):
        self.distiller, self.optimizer = distiller, optimizer
        dtype = torch.bfloat16 if amp_dtype == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler(device_type, enabled=amp_enabled and amp_dtype == "fp16")
        self.autocast = lambda: torch.autocast(device_type, dtype=dtype, enabled=amp_enabled)

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 progress: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """``(student logits, loss terms, their sum)`` of the batch, after the update."""
        with self.autocast():
            logits, losses = self.distiller(x, y, progress=progress)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits, losses, loss


class LoaderSteps:
    """An epoch of ``TrainStep`` on the batches of a DataLoader, with the metrics since the last ``take``."""

    def __init__(self, step: TrainStep, loader: DataLoader, device: torch.device):
        self.step, self.batches, self.device = step, iter(loader), device
        self.meters = Meters()

    def run(self, it: int, progress: float) -> None:
        x, y = next(self.batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        logits, losses, loss = self.step(x, y, progress=progress)
        self.meters.add(len(y), **losses, loss=loss, **topk_correct(logits.detach().float(), y))

    def take(self) -> Meters:
        meters, self.meters = self.meters, Meters()
        return meters


class Trainer:
    """One training run of ``cfg`` (frozen CfgNode from ``load_cls_cfg``) in ``cfg.OUTPUT_DIR``."""

    def __init__(self, cfg, env: Optional[Env] = None):
        self.cfg = cfg
        self.env = env or setup_distributed()
        if cfg.SOLVER.BATCH_SIZE % self.env.world:
            raise ValueError(f"SOLVER.BATCH_SIZE={cfg.SOLVER.BATCH_SIZE} is the global batch and must divide "
                             f"evenly over {self.env.world} processes")
        self.out = cfg.OUTPUT_DIR
        os.makedirs(self.out, exist_ok=True)
        if self.env.main:
            for path in remove_orphans(self.out):
                logger.warning("removed %s, left by a run killed while writing it", path)
        _barrier(self.env)
        seed_everything(cfg.SEED)  # same initial weights on every rank
        self.splits = build_splits(cfg)
        self.student = build_student(cfg).to(self.env.device)
        teacher = build_teacher(cfg)
        self.teacher = teacher.to(self.env.device) if teacher is not None else None
        if self.env.rank:  # decorrelate augmentation across ranks; rank 0 keeps the single-process stream
            seed_everything(cfg.SEED + 1000 * self.env.rank)
        wrapped = self.student
        if self.env.world > 1:
            device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.student, device_ids=device_ids)
        self.distiller = Distiller(wrapped, self.teacher, build_distill_loss(cfg).to(self.env.device))

        s = cfg.SOLVER
        self.optimizer = build_optimizer(cfg, self.student)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.step = TrainStep(self.distiller, self.optimizer, self.env.device.type, cfg.AMP.ENABLED, cfg.AMP.DTYPE)
        self.scaler, self.autocast = self.step.scaler, self.step.autocast

        self.sampler = DistributedSampler(self.splits.train, num_replicas=self.env.world, rank=self.env.rank,
                                          shuffle=True, seed=cfg.SEED)
        workers = cfg.DATASET.NUM_WORKERS
        evals = {name: ds for name, ds in (("val", self.splits.val), ("test", self.splits.test)) if ds is not None}
        self.fast: Optional[FastStep] = None
        if use_fast_path(cfg, self.env.device, self.env.world):
            cuda = self.env.device.type == "cuda"
            self.fast = FastStep(self.step, self.splits.train.to(self.env.device), s.BATCH_SIZE,
                                 self.distiller.loss.term_names, compile="inductor" if cuda else None, cuda_graph=cuda)
            # The same sampler and DataLoader draw each epoch's order and augmentation, nothing else.
            self.train_loader = _loader(AugmentationPlan(self.splits.train), s.BATCH_SIZE, workers, self.sampler)
            self.eval_loaders = {name: DeviceBatches(ds.to(self.env.device), cfg.TEST.BATCH_SIZE)
                                 for name, ds in evals.items()}
        else:
            self.train_loader = _loader(self.splits.train, s.BATCH_SIZE // self.env.world, workers, self.sampler)
            self.eval_loaders = {name: _loader(_shard(ds, self.env), cfg.TEST.BATCH_SIZE, workers)
                                 for name, ds in evals.items()}
        self.start_epoch = 0
        self.records: Dict[str, Any] = {"last": None, "best": None, "teacher": None}
        # What the checkpoint stores to recognise its run: the config, and the teacher file's content
        # (a retrained teacher at the same path is another run).
        self.fingerprint = flatten(cfg.dump())
        if is_distillation(cfg):
            self.fingerprint[TEACHER_DIGEST] = file_sha256(cfg.MODEL.TEACHER_WEIGHTS)
        self.config_changes: List[Dict[str, Any]] = []
        self.writer = None
        if self.env.main and cfg.LOG.TENSORBOARD:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.out, "tb"))
        logger.info("data %s, student %s, teacher %s, method %s, %d process(es) on %s, %s path", describe(self.splits),
                    cfg.MODEL.STUDENT, cfg.MODEL.TEACHER or "-", cfg.DISTILL.METHOD, self.env.world, self.env.device,
                    "fast" if self.fast else "DataLoader")

    # -- logging ----------------------------------------------------------------------------------
    def _log(self, record: Dict[str, Any], step: int) -> None:
        if not self.env.main:
            return
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "iter", "step"):
                    # Prefixed with the record type: per-iteration and per-epoch curves have different x axes.
                    self.writer.add_scalar(f"{record['type']}/{key}", value, step)
            self.writer.flush()

    # -- checkpoints ------------------------------------------------------------------------------
    def _gathered_rng(self) -> List[Dict[str, Any]]:
        if self.env.world == 1:
            return [rng_state()]
        states: List[Optional[Dict[str, Any]]] = [None] * self.env.world
        dist.all_gather_object(states, rng_state())
        return states

    def save_checkpoint(self, epochs_done: int) -> None:
        """Called on every rank (the RNG states are gathered); rank 0 writes."""
        rng = self._gathered_rng()
        if self.env.main:
            state = {
                "model": self.student.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": epochs_done,
                "records": self.records,
                "rng": rng,
                "world_size": self.env.world,
                "config": self.cfg.dump(),
                "fingerprints": {k: v for k, v in self.fingerprint.items() if k == TEACHER_DIGEST},
                "config_changes": self.config_changes,
            }
            save_atomic(state, os.path.join(self.out, LAST_CHECKPOINT))
            if epochs_done % self.cfg.CHECKPOINT_PERIOD == 0 or epochs_done == self.cfg.SOLVER.EPOCHS:
                save_atomic(state, os.path.join(self.out, f"ckpt_epoch_{epochs_done}.pth"))
        _barrier(self.env)

    def _resume_checkpoint(self) -> Optional[str]:
        """``last.pth``, or the newest readable ``ckpt_epoch_<N>.pth`` if it is damaged; None if there is
        no checkpoint at all."""
        numbered = sorted((int(m.group(1)), name) for name in os.listdir(self.out) if (m := _NUMBERED.match(name)))
        candidates = [os.path.join(self.out, n) for n in [LAST_CHECKPOINT] + [n for _, n in reversed(numbered)]]
        candidates = [p for p in candidates if os.path.isfile(p)]
        return first_readable_checkpoint(candidates, WeightsError, "Start the run over without --resume (after "
                                         "moving these files away), or use another OUTPUT_DIR")

    def resume(self, allow_config_change: bool = False) -> bool:
        """Continue from ``OUTPUT_DIR/last.pth`` (or the newest readable checkpoint) if there is one and it
        was written under an equivalent config; return whether it did."""
        path = self._resume_checkpoint()
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", self.out)
            return False
        state = load_file(path, "checkpoint", fix="start over without --resume, or use another OUTPUT_DIR")
        stored, current = None, self.fingerprint
        if "config" in state:
            stored = {**flatten(state["config"]), **state.get("fingerprints", {})}
            if TEACHER_DIGEST not in stored:  # written before the digest was stored: compare the rest
                current = {k: v for k, v in current.items() if k != TEACHER_DIGEST}
        changes = check_resume(stored, current, RESUME_RULES, state["epoch"], path, allow_config_change,
                               flatten(get_cls_cfg().dump()))
        check_fits(self.student, state["model"], path, f"student {self.cfg.MODEL.STUDENT!r} of this config")
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.records = state["epoch"], state["records"]
        self.config_changes = list(state.get("config_changes", []))
        if state["world_size"] == self.env.world:
            set_rng_state(state["rng"][self.env.rank])
        else:
            logger.warning("checkpoint was written by %d process(es), resuming with %d: the data order is the "
                           "same, augmentation randomness is not", state["world_size"], self.env.world)
        if changes:
            record = {"epoch": self.start_epoch, "changes": {c.key: [c.old, c.new] for c in changes}}
            self.config_changes.append(record)
            self._log({"type": "config_change", **record}, self.start_epoch)
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)
        return True

    # -- loops ------------------------------------------------------------------------------------
    def evaluate_all(self, model: nn.Module) -> Dict[str, float]:
        out = {}
        for name, loader in self.eval_loaders.items():
            out.update({f"{name}/{k}": v for k, v in evaluate(model, loader, self.env, self.autocast).items()})
        return out

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, env = self.cfg, self.env
        self.distiller.train()
        self.sampler.set_epoch(epoch)
        iters = len(self.train_loader)
        if self.fast:
            self.fast.start_epoch(*self._epoch_plan())
            steps = self.fast
        else:
            steps = LoaderSteps(self.step, self.train_loader, env.device)
        epoch_meters = Meters()
        # disable=None: no bar when stderr is not a terminal (logs, CI); metrics.jsonl has the numbers.
        bar = tqdm(total=iters, disable=None if env.main else True, desc=f"epoch {epoch + 1}/{cfg.SOLVER.EPOCHS}",
                   dynamic_ncols=True, leave=False)
        for it in range(iters):
            steps.run(it, epoch + it / iters)
            bar.update()
            step = epoch * iters + it + 1
            # The only host reads of the epoch: the metrics and the loss's fault record, once a period.
            if step % cfg.LOG.PERIOD == 0 or it + 1 == iters:
                period = steps.take()
                epoch_meters.merge(period)
                means = period.reduce(env)
                self._check_faults(iters)
                lr = self.optimizer.param_groups[0]["lr"]
                self._log({"type": "train_iter", "epoch": epoch + 1, "iter": it + 1, "step": step, "lr": lr,
                           **{f"train/{k}": v for k, v in means.items()}}, step)
                bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.3g}")
        bar.close()
        self._sync_buffers()
        return epoch_meters.reduce(env)

    def _epoch_plan(self) -> Tuple[torch.Tensor, CropFlip]:
        """The epoch's sample order and augmentation, drawn as the DataLoader path draws them."""
        indices, params = zip(*self.train_loader)
        return torch.cat(indices), CropFlip(*(None if v[0] is None else torch.cat(v) for v in zip(*params)))

    def _check_faults(self, iters: int) -> None:
        """Act on the loss's record of non-finite terms and bad labels since the last check (every rank's)."""
        loss = self.distiller.loss
        packed = loss.faults.pack()
        if self.env.world > 1:
            rows = [torch.empty_like(packed) for _ in range(self.env.world)]
            dist.all_gather(rows, packed)
            packed = torch.stack(rows)

        def step_name(progress: float) -> str:
            epoch = int(progress)
            return f"epoch {epoch + 1}, iteration {round((progress - epoch) * iters) + 1}"

        loss.check_faults(step_name, packed)

    def _sync_buffers(self) -> None:
        """DDP broadcasts rank 0's BatchNorm statistics at the start of each forward, and every rank then
        updates its own copy; after the last step give all ranks rank 0's, the ones the checkpoint
        holds, so that every rank evaluates the model that is saved."""
        if self.env.world > 1:
            for buffer in self.student.buffers():
                dist.broadcast(buffer, 0)

    def _update_records(self, epoch: int, train: Dict[str, float], evals: Dict[str, float]) -> None:
        record = {"epoch": epoch, **evals, "train/top1": train["top1"]}
        self.records["last"] = record
        # "best" is chosen on the held-out val split when there is one, else on the test split
        # (the mdistiller/CRD protocol, where CIFAR's test set is called "val").
        key = "val/top1" if "val/top1" in evals else "test/top1"
        best = self.records["best"]
        if best is None or record[key] > best[key]:
            self.records["best"] = record

    def results(self) -> Dict[str, Any]:
        return {"seed": self.cfg.SEED, "epochs": self.cfg.SOLVER.EPOCHS, **self.records, "config": self.cfg.dump(),
                "config_changes": self.config_changes}

    def train(self, resume: bool = False, allow_config_change: bool = False) -> Dict[str, Any]:
        """Train to SOLVER.EPOCHS; ``resume`` continues from the run's checkpoint, and
        ``allow_config_change`` accepts (and records) config changes that a resume otherwise refuses."""
        cfg, env = self.cfg, self.env
        resumed = resume and self.resume(allow_config_change)
        if env.main and (not resumed or self.config_changes):
            write_text_atomic(os.path.join(self.out, "config.yaml"), cfg.dump())
        if not resumed and self.teacher is not None and cfg.TEST.EVAL_TEACHER:
            # Each loader's iterator draws its base seed from the global RNG: kept out of the student's
            # draws (dropout, augmentation), so that a seed trains the same with and without a teacher.
            with torch.random.fork_rng(devices=[]):
                self.records["teacher"] = self.evaluate_all(self.teacher)
            self._log({"type": "teacher", "epoch": 0, **self.records["teacher"]}, 0)
            logger.info("teacher %s: %s", cfg.MODEL.TEACHER, _fmt(self.records["teacher"]))
        for epoch in range(self.start_epoch, cfg.SOLVER.EPOCHS):
            lr = self.optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            train = self.train_one_epoch(epoch)
            seconds = time.perf_counter() - start
            self.scheduler.step()
            evals = self.evaluate_all(self.student)
            self._update_records(epoch + 1, train, evals)
            self._log({"type": "epoch", "epoch": epoch + 1, "lr": lr, "train_seconds": seconds,
                       **{f"train/{k}": v for k, v in train.items()}, **evals,
                       **{f"best/{k}": v for k, v in self.records["best"].items() if k != "epoch"}}, epoch + 1)
            logger.info("epoch %d/%d (%.1fs) train loss %.4f | %s | best %s", epoch + 1, cfg.SOLVER.EPOCHS, seconds,
                        train["loss"], _fmt(evals), _fmt(self.records["best"]))
            self.save_checkpoint(epoch + 1)
        results = self.results()
        if env.main:
            save_json(results, os.path.join(self.out, RESULTS_FILE))
            logger.info("last (epoch %d): %s", results["last"]["epoch"], _fmt(results["last"]))
            logger.info("best (epoch %d): %s", results["best"]["epoch"], _fmt(results["best"]))
        if self.writer is not None:
            self.writer.close()
        return results

    def evaluate_only(self) -> Dict[str, float]:
        """Evaluate MODEL.WEIGHTS if given (loaded when the student was built), else OUTPUT_DIR/last.pth."""
        if not self.cfg.MODEL.WEIGHTS:
            path = os.path.join(self.out, LAST_CHECKPOINT)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--eval-only needs MODEL.WEIGHTS or a checkpoint at {path!r}")
            state = load_file(path, "checkpoint", fix="give another file as MODEL.WEIGHTS")["model"]
            check_fits(self.student, state, path, f"student {self.cfg.MODEL.STUDENT!r} of this config")
            self.student.load_state_dict(state)
        metrics = self.evaluate_all(self.student)
        self._log({"type": "eval", "weights": self.cfg.MODEL.WEIGHTS or LAST_CHECKPOINT, **metrics}, 0)
        logger.info("eval: %s", _fmt(metrics))
        return metrics


def _fmt(metrics: Dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float) and "top" in k)


def save_json(obj: Any, path: str) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


@contextlib.contextmanager
def distributed_session():
    """Set up the process group for a tool's lifetime and tear it down after (torchrun or single process)."""
    env = setup_distributed()
    try:
        yield env
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
