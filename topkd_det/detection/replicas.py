"""What keeps the student's copies in several processes one model: DDP's arguments for the device the
model is on, plain BatchNorm statistics averaged over the ranks before anything reads them, every
rank's random state for the checkpoint, and a check at the end of training that every rank holds the
same weights. Both detection trainers (``engine.DistillTrainer``, ``lazy_engine.train``) use it.
"""
import hashlib
import logging
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase, hooks
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm

from ..rng import rng_state

logger = logging.getLogger(__name__)
_PLAIN_BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def ddp_kwargs(model: torch.nn.Module, **given: Any) -> Dict[str, Any]:
    """``create_ddp_model``'s keyword arguments for ``model``: Detectron2 passes ``device_ids=[local
    rank]`` unless told otherwise, which DDP accepts for a module on one GPU only; a CPU module (gloo
    workers) gets ``device_ids=None``. A ``device_ids`` the caller gives is kept."""
    if "device_ids" not in given:
        device = next(model.parameters()).device
        given["device_ids"] = [device] if device.type == "cuda" else None
    return given


def unsynced_batchnorms(model: torch.nn.Module) -> List[torch.nn.Module]:
    """BatchNorm layers whose running statistics each rank keeps on its own: plain BN with running
    statistics (not Detectron2's NaiveSyncBatchNorm, torch's SyncBatchNorm or FrozenBatchNorm2d)."""
    return [m for m in model.modules()
            if isinstance(m, _PLAIN_BATCHNORM) and not isinstance(m, NaiveSyncBatchNorm) and m.track_running_stats]


def average_batchnorm_statistics(model: torch.nn.Module) -> int:
    """Replace every rank's plain-BN running mean and variance by their mean over the ranks; returns the
    number of layers. Training is unchanged (BN normalises with the batch's statistics in training);
    what changes is what evaluation and checkpoints see. Detectron2 sets ``broadcast_buffers=False``,
    so without this the ranks' statistics drift apart and the checkpoint keeps rank 0's alone."""
    layers = unsynced_batchnorms(model)
    world = comm.get_world_size()
    if world == 1 or not layers:
        return 0
    buffers = [buf for m in layers for buf in (m.running_mean, m.running_var)]
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for buf in buffers:
        buf.copy_(flat[offset:offset + buf.numel()].view_as(buf))
        offset += buf.numel()
    return len(layers)


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective: all ranks call it)."""
    state = rng_state()
    return comm.all_gather(state) if comm.get_world_size() > 1 else [state]


def replica_digest(model: torch.nn.Module) -> Dict[str, str]:
    """sha256 of each parameter and buffer of ``model`` (by state-dict name), on its exact bytes."""
    out = {}
    for name, value in model.state_dict().items():
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        out[name] = hashlib.sha256(data.numpy().tobytes()).hexdigest()
    return out


class ReplicasDiffer(RuntimeError):
    """The ranks ended training with different weights: the run's numbers are not one model's."""


def check_replicas(model: torch.nn.Module) -> Optional[str]:
    """Compare every rank's parameters and buffers (a collective). Returns the digest of the whole
    state (the same on every rank), or raises ``ReplicasDiffer`` naming the ranks and first keys."""
    if comm.get_world_size() == 1:
        return None
    digests = comm.all_gather(replica_digest(model))
    reference = digests[0]
    for rank, digest in enumerate(digests[1:], start=1):
        differing = sorted(k for k in reference if digest.get(k) != reference[k])
        if differing or digest.keys() != reference.keys():
            raise ReplicasDiffer(f"rank {rank} ended training with other weights than rank 0 in "
                                 f"{len(differing)} tensors ({', '.join(differing[:5])}); the checkpoint holds "
                                 "rank 0's. This is a bug: please report it with the config")
    whole = hashlib.sha256("".join(reference[k] for k in sorted(reference)).encode()).hexdigest()
    logger.info("all %d ranks hold the same weights and buffers (sha256 %s)", comm.get_world_size(), whole[:16])
    return whole


def insert_before_readers(hook_list: List[Optional[HookBase]], sync: HookBase) -> List[Optional[HookBase]]:
    """``hook_list`` with ``sync`` right before the first hook that checkpoints or evaluates (the
    checkpointer runs on the main process only, the evaluation on every rank)."""
    at = next((i for i, h in enumerate(hook_list) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))),
              len(hook_list))
    return hook_list[:at] + [sync] + hook_list[at:]


class ReplicaSync(HookBase):
    """Keeps the ranks' copies of the student one model at the iterations where something reads it.

    Registered on every rank and before the checkpointer and the evaluation hook: at an iteration
    where a checkpoint is written (every ``checkpoint_period``, and the last) or an evaluation runs
    (every ``eval_period``), plain-BN statistics are averaged over the ranks and every rank's RNG
    states are gathered, for the checkpoint to store (``rng_states``). After training it checks that
    all ranks hold the same weights (``check_replicas``).
    """

    def __init__(self, checkpoint_period: int, eval_period: int, max_iter: int):
        self.periods = [p for p in (checkpoint_period, eval_period) if p and p > 0]
        self.max_iter = max_iter
        self.rng_states: Optional[List[Dict[str, Any]]] = None

    def _reads_at(self, iteration: int) -> bool:
        next_iter = iteration + 1
        return next_iter >= self.max_iter or any(next_iter % p == 0 for p in self.periods)

    def sync(self) -> None:
        average_batchnorm_statistics(self.trainer.model)
        self.rng_states = gather_rng_states()

    def rng_states_for_checkpoint(self) -> List[Dict[str, Any]]:
        """Every rank's RNG states for a checkpoint written now (on the main process): this process's
        own when it is alone, else those gathered at the last ``sync``, which precedes every write."""
        if comm.get_world_size() == 1 or self.rng_states is None:
            return [rng_state()]
        return self.rng_states

    def after_step(self):
        if self._reads_at(self.trainer.iter):
            self.sync()

    def after_train(self):
        # Detectron2 leaves ``iter == max_iter`` only after a loop that finished; after an exception
        # the other ranks may be gone, and a collective would wait for them.
        if self.trainer.iter == self.trainer.max_iter:
            check_replicas(self.trainer.model)
