"""The fast classification path (``FAST_PATH``): the in-memory data set on the device, each epoch's
augmentation applied there in batches, channels_last models, and the whole training step (teacher
forward, student forward and backward, loss, SGD) compiled and captured in one CUDA graph.

The batches are those of the DataLoader path from the same seed: ``AugmentationPlan`` draws each
epoch's order and crop/flip parameters on the CPU, through the same sampler and DataLoader, with the
same calls on the same RNG, and the device applies them (``TensorImages.augment``, shared with the
DataLoader path). A step reads its batch from those parameters at a position held in a device tensor,
so one captured graph serves every full batch; the last, smaller batch of an epoch runs the same step
uncaptured. The LR lives in a device tensor per parameter group, refilled from the optimizer (which the
scheduler drives as in the DataLoader path) at each epoch, so checkpoints are the same in both paths.
The step's metrics add up on the device and are read at the trainer's logging points only.

On a CPU the same step runs eagerly (that is how the tests check it against the DataLoader path).
"""
import contextlib
from typing import Optional

import torch
from torch.utils.data import DataLoader

from ..config_io import ConfigError
from .data import CropFlip, TensorImages
from .metrics import Meters, topk_correct

FAST_PATH_MODES = ("never", "auto", "always")
# Steps run before capturing, so that compilation, cuDNN's algorithm search and the allocator have
# settled; their effect on the weights is undone.
WARMUP_STEPS = 3


def fast_path_problem(cfg) -> Optional[str]:
    """Why the config cannot take the fast path (None if it can), naming the key."""
    d = cfg.DATASET
    if d.NAME == "imagenet":
        return "DATASET.NAME imagenet is read from image files, not held in memory"
    if d.TRANSFORM != "crop_flip":
        return f"DATASET.TRANSFORM {d.TRANSFORM} runs per image on the CPU (only crop_flip runs on the device)"
    if cfg.SOLVER.OPTIMIZER != "sgd":
        return f"SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER}: the captured step has SGD only"
    if cfg.AMP.ENABLED and cfg.AMP.DTYPE == "fp16":
        return "AMP.DTYPE fp16 needs the grad scaler, which reads the gradients' finiteness on the host; use bf16"
    return None


def use_fast_path(cfg, device: torch.device, world: int) -> bool:
    """``FAST_PATH``: never; always (a config or setting it cannot serve is an error); auto (on a CUDA
    device with one process, when the config allows it)."""
    mode = cfg.FAST_PATH
    if mode == "never":
        return False
    problem = fast_path_problem(cfg) or (f"{world} processes: the fast path runs one" if world > 1 else None)
    if mode == "always":
        if problem:
            raise ConfigError(f"FAST_PATH always: {problem}; set FAST_PATH auto or never")
        return True
    return problem is None and device.type == "cuda"


class DeviceBatches:
    """A data set's batches in order, sliced from its images on the device (evaluation, no augmentation)."""

    def __init__(self, images: TensorImages, batch_size: int):
        self.images, self.batch_size = images, batch_size
        # Positions come through a DataLoader because its iterator draws a seed from the global RNG, as
        # the DataLoader path's evaluation does: both paths then stay on one random stream.
        self.positions = DataLoader(range(len(images)), batch_size=batch_size)

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self):
        none = CropFlip(None, None, None)
        for index in self.positions:
            start, stop = int(index[0]), int(index[-1]) + 1
            x = self.images.augment(self.images.images[start:stop], none)
            yield x.contiguous(memory_format=torch.channels_last), self.images.labels[start:stop]


class FastStep:
    """The training step of ``train_step`` (a ``TrainStep``: distiller, SGD optimizer, autocast) on
    batches of ``images`` (a ``TensorImages`` on the device) of ``batch_size``.

    ``start_epoch(order, params)`` takes the epoch's sample order and augmentation; ``run(it, progress)``
    trains on batch ``it``; ``take()`` returns the metric sums since the last call. ``compile``: a
    ``torch.compile`` backend for the forward and loss (None: eager); ``cuda_graph``: capture the step.
    """

    def __init__(self, train_step, images: TensorImages, batch_size: int, term_names, compile: Optional[str] = None,
                 cuda_graph: bool = False):
        self.train_step, self.images, self.batch_size = train_step, images, batch_size
        self.distiller, self.optimizer = train_step.distiller, train_step.optimizer
        device = images.images.device
        self.device = device
        self.names = list(term_names) + ["loss", "top1", "top5"]
        self.position = torch.zeros((), dtype=torch.long, device=device)  # of the batch's first sample
        self.progress = torch.zeros((), dtype=torch.float64, device=device)
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.count = 0
        self.order: Optional[torch.Tensor] = None
        self.params: Optional[CropFlip] = None
        self.lrs = [torch.zeros((), device=device) for _ in self.optimizer.param_groups]
        self.forward = (torch.compile(self._forward, fullgraph=True, dynamic=False, backend=compile)
                        if compile else self._forward)
        self.cuda_graph = cuda_graph
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest algorithm is found once
        for module in {self.distiller.student, self.distiller.teacher} - {None}:
            module.to(memory_format=torch.channels_last)

    # -- the step ---------------------------------------------------------------------------------
    def _forward(self, size: int):
        """Loss of the batch of ``size`` samples at ``self.position``, and the metrics' values."""
        positions = self.position + torch.arange(size, device=self.device)
        index = self.order[positions]
        params = CropFlip(*(None if v is None else v[positions] for v in self.params))
        x = self.images.augment(self.images.images[index], params).contiguous(memory_format=torch.channels_last)
        y = self.images.labels[index]
        with self.train_step.autocast():
            logits, losses = self.distiller(x, y, progress=self.progress)
        total = sum(losses.values())
        return total, torch.stack([*losses.values(), total, *topk_correct(logits.detach().float(), y).values()])

    def _train(self, size: int, forward) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        total, values = forward(size)
        total.backward()
        with self._fused_with_device_lrs():
            self.optimizer.step()
        self.sums.add_(values.to(torch.float64) * size)

    @contextlib.contextmanager
    def _fused_with_device_lrs(self):
        """During a step the optimizer runs its fused kernel, which reads each group's LR from its device
        tensor without a sync; outside, its groups are as the DataLoader path has them (and checkpoints)."""
        saved = [(group["lr"], group["fused"]) for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.lrs):
            group["lr"], group["fused"] = lr, True
        try:
            yield
        finally:
            for group, (lr, fused) in zip(self.optimizer.param_groups, saved):
                group["lr"], group["fused"] = lr, fused

    # -- epochs -----------------------------------------------------------------------------------
    def start_epoch(self, order: torch.Tensor, params: CropFlip) -> None:
        """The epoch's sample order and augmentation (CPU tensors, one entry per sample), and its LR."""
        if self.order is None or self.order.shape != order.shape:
            self.order = order.to(self.device)
            self.params = params.to(self.device)
        else:  # the captured graph reads these tensors: refill them in place
            self.order.copy_(order)
            for mine, new in zip(self.params, params):
                if mine is not None:
                    mine.copy_(new)
        for lr, group in zip(self.lrs, self.optimizer.param_groups):
            lr.fill_(group["lr"])
        self._align_momentum()

    def _align_momentum(self) -> None:
        """Momentum buffers laid out as their (channels_last) parameters: the fused kernel walks both as
        flat memory, so a contiguous buffer from a checkpoint would silently mix up the updates."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                buf = self.optimizer.state[p].get("momentum_buffer")
                if buf is not None and buf.stride() != p.stride():
                    self.optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)

    def iterations(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def run(self, it: int, progress: float) -> None:
        """Train on batch ``it`` of the epoch at ``progress`` (epochs)."""
        self.position.fill_(it * self.batch_size)
        self.progress.fill_(progress)
        size = min(self.batch_size, len(self.order) - it * self.batch_size)
        if size < self.batch_size:  # the epoch's last, smaller batch: the same step, eager and uncaptured
            self._train(size, self._forward)
        elif not self.cuda_graph:
            self._train(size, self.forward)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.count += size

    def take(self) -> Meters:
        """The metrics of the samples since the last call (sums on the device)."""
        meters = Meters()
        meters.add_sums(self.count, dict(zip(self.names, self.sums.clone().unbind())))
        self.sums.zero_()
        self.count = 0
        return meters

    # -- CUDA graph -------------------------------------------------------------------------------
    def _state(self):
        """Everything a step changes: student weights and buffers, momentum, the loss's fault record,
        the metric sums (the teacher is frozen)."""
        tensors = list(self.distiller.student.parameters()) + list(self.distiller.student.buffers())
        tensors += [self.optimizer.state[p]["momentum_buffer"] for g in self.optimizer.param_groups
                    for p in g["params"] if "momentum_buffer" in self.optimizer.state[p]]
        return tensors + list(self.distiller.loss.buffers()) + [self.sums]

    def _capture(self) -> None:
        """Warm up on a side stream, undo the warm-up's changes in place, then capture one full step."""
        for group in self.optimizer.param_groups:
            if group["momentum"]:
                for p in group["params"]:  # zero momentum steps exactly as none (buf = grad)
                    self.optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        saved = [t.detach().clone() for t in self._state()]
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._train(self.batch_size, self.forward)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for tensor, value in zip(self._state(), saved):
                tensor.copy_(value)
        torch.cuda.set_rng_state(rng, self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._train(self.batch_size, self.forward)
