"""What ``tools/train_net.py`` and ``tools/lazyconfig_train_net.py`` share around Detectron2's
``default_argument_parser`` and ``launch``: the flags this project adds, a required config file, the
checks that run once in the launching process before any worker starts, and workers whose failure
ends the run as one line naming the rank.

Processes are started by Detectron2's own ``launch`` (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``; NCCL on GPUs, gloo on a CPU), or by ``torchrun``, whose
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``) is recognised.
"""
import argparse
import inspect
import os
import sys
import time
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

from ..cli import INTERRUPTED_EXIT, UNEXPECTED_EXIT, USER_ERROR_EXIT, add_debug_flag, is_user_error, one_line, run
from ..config_io import ConfigError
from ..resume_rules import ALLOW_FLAG

MULTI_GPU_DOCS = "docs/multi_gpu.md"
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
# The workers of a run whose config the launching process has checked skip those checks.
CHECKED = "checked_by_launcher"
# The data check's summary lines, which the launching process leaves for every process's log.
DATA_CHECK_SUMMARY = "data_check_summary"


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """Detectron2's parser with ``--allow-config-change`` and ``--debug``."""
    parser = default_argument_parser(doc)
    parser.add_argument(ALLOW_FLAG, action="store_true",
                        help="with --resume: accept config changes that alter the result, and record them")
    return add_debug_flag(parser)


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], example: str) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error(f"--config-file is required ({example})")
    # Detectron2's parser takes everything after the first override as overrides (argparse.REMAINDER).
    flags = [opt for opt in args.opts if isinstance(opt, str) and opt.startswith("--")]
    if flags:
        parser.error(f"{', '.join(flags)} came after the config overrides, which take everything after the first "
                     f"one: put flags before the overrides (--config-file FILE {flags[0]} ... then the overrides)")
    return args


def world_size(args: argparse.Namespace) -> int:
    """The number of processes the run will have."""
    torchrun = torchrun_world()
    return torchrun if torchrun is not None else args.num_gpus * args.num_machines


def torchrun_world() -> Optional[int]:
    """The world size when this process was started by ``torchrun`` (None otherwise)."""
    if all(name in os.environ for name in TORCHRUN_VARIABLES):
        return int(os.environ["WORLD_SIZE"])
    return None


def launch_starts_cpu_workers() -> bool:
    """Whether the installed Detectron2's ``launch`` starts workers without CUDA. Detectron2 0.6's
    asserts CUDA in every worker; later ones (main) pick gloo when there is no GPU. Both report
    ``__version__`` 0.6, so the launch module's own source says which behaviour is installed."""
    return "GLOO" in inspect.getsource(inspect.getmodule(launch)).upper()


def check_processes(args: argparse.Namespace) -> None:
    """The process flags fit this machine and this Detectron2, before anything else runs."""
    for flag, value in (("--num-gpus", args.num_gpus), ("--num-machines", args.num_machines)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if not 0 <= args.machine_rank < args.num_machines:
        raise ConfigError(f"--machine-rank must be in 0..{args.num_machines - 1} for --num-machines "
                          f"{args.num_machines}, got {args.machine_rank}")
    if torchrun_world() is not None:
        if args.num_gpus != 1 or args.num_machines != 1:
            raise ConfigError("under torchrun the processes are torchrun's (--nproc-per-node, --nnodes): leave out "
                              f"--num-gpus and --num-machines ({MULTI_GPU_DOCS})")
        if not hasattr(comm, "create_local_process_group"):
            raise ConfigError("torchrun needs a Detectron2 whose detectron2.utils.comm has create_local_process_group "
                              "(the official build, main); with Detectron2 0.6 start the processes with --num-gpus "
                              f"and --num-machines instead ({MULTI_GPU_DOCS})")
        return
    if torch.cuda.is_available():
        if args.num_gpus > torch.cuda.device_count():
            raise ConfigError(f"--num-gpus {args.num_gpus}: this machine has {torch.cuda.device_count()} CUDA "
                              "GPU(s); start at most one process per GPU")
    elif world_size(args) > 1 and not launch_starts_cpu_workers():
        raise ConfigError(
            f"--num-gpus {args.num_gpus} --num-machines {args.num_machines}: this machine has no CUDA GPU, and the "
            "installed Detectron2 (0.6) starts several processes on CUDA GPUs only. Run with --num-gpus 1, or "
            "use the official Detectron2 (main), whose launch starts gloo workers on a CPU: python "
            "tools/install_detectron2.py --source <its source> --target DIR, then PYTHONPATH=DIR "
            f"({MULTI_GPU_DOCS})")


def check_batch_split(total: int, world: int, key: str) -> None:
    """Every process gets the same share of a batch (Detectron2 asserts it when the loader is built)."""
    if world > 1 and total % world:
        raise ConfigError(f"{key} {total} cannot be split over {world} processes: give a multiple of {world} "
                          f"(each process takes {key} / processes images per step)")


def launch_checked(args: argparse.Namespace, main: Callable, check: Callable[[int], None]):
    """Run ``main(args)`` in every process of the run, after ``check(world_size)`` (the config, data,
    teacher and resume checks) ran once, here, before any worker starts. Errors end as one line
    (``--debug``: traceback); a failing worker names its rank, and the others are stopped."""

    def start():
        check_processes(args)
        if torchrun_world() is not None:
            return _under_torchrun(args, main, check)
        check(world_size(args))
        setattr(args, CHECKED, True)
        try:
            return launch(run_in_worker, args.num_gpus, num_machines=args.num_machines,
                          machine_rank=args.machine_rank, dist_url=args.dist_url, args=(main, args))
        except mp.ProcessExitedException as err:
            raise SystemExit(_exit_code_of_worker(err, args)) from None

    return run(start, debug=args.debug)


def run_in_worker(main: Callable, args: argparse.Namespace):
    """``main(args)`` in one process of several: an error is printed as one line that names the rank,
    and the process exits with the code the tools use (the launcher then stops the other workers)."""
    share_cpu_threads()
    try:
        result = main(args)
        end_process_group()
        return result
    except KeyboardInterrupt:
        raise SystemExit(INTERRUPTED_EXIT) from None
    except Exception as err:  # noqa: BLE001 - one line per failing worker unless --debug
        if args.debug or comm.get_world_size() == 1:
            raise
        if _lost_a_peer(err):
            # Another process ended first and reports why; this one only stopped waiting for it. It
            # leaves a moment later, so that the launcher, which stops every worker as soon as one
            # ends, sees the failing one end first and this one says nothing.
            time.sleep(LOST_PEER_GRACE_SECONDS)
            raise SystemExit(LOST_PEER_EXIT) from None
        print(f"error: rank {comm.get_rank()} of {comm.get_world_size()}: {one_line(err)}", file=sys.stderr,
              flush=True)
        raise SystemExit(USER_ERROR_EXIT if is_user_error(err) else UNEXPECTED_EXIT) from None


def end_process_group() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits, so that
    no rank leaves while another still talks to it and no rank's exit tears gloo's or NCCL's threads
    down under it (torch asks for ``destroy_process_group`` before exit)."""
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def share_cpu_threads() -> None:
    """CPU workers split the machine's cores: torch's default of one thread per core in each of N
    processes oversubscribes the cores N times, and OpenMP's spinning threads then slowed a
    2-process step 20-fold here. ``OMP_NUM_THREADS``, when set, is the user's choice and is kept."""
    local = comm.get_local_size()
    if local > 1 and not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))


# A worker that stopped because another process of the run ended: the one that failed says why.
LOST_PEER_EXIT = 3
LOST_PEER_GRACE_SECONDS = 30


def _lost_a_peer(err: BaseException) -> bool:
    """A collective that failed because a peer process went away (gloo and NCCL word it their way)."""
    text = str(err).lower()
    return isinstance(err, (dist.DistError, RuntimeError)) and any(
        phrase in text for phrase in ("connection closed by peer", "connection reset by peer", "broken pipe",
                                      "socket closed", "remote process exited", "nccl communicator was aborted"))


def _exit_code_of_worker(err: mp.ProcessExitedException, args: argparse.Namespace) -> int:
    """The launcher's exit after a worker ended: quietly with the worker's code when it printed its own
    line, else one line saying which rank ended and how."""
    rank = args.machine_rank * args.num_gpus + err.error_index
    if err.exit_code in (USER_ERROR_EXIT, UNEXPECTED_EXIT, INTERRUPTED_EXIT):
        return err.exit_code
    how = (f"was killed by signal {err.signal_name}" if err.signal_name else
           "stopped because a process of the run on another machine ended (its log says why)"
           if err.exit_code == LOST_PEER_EXIT else f"exited with status {err.exit_code}")
    print(f"error: rank {rank} of {world_size(args)} {how} (its log: OUTPUT_DIR/log.txt"
          f"{'' if rank == 0 else f'.rank{rank}'}; --debug shows tracebacks)", file=sys.stderr, flush=True)
    return UNEXPECTED_EXIT


def _under_torchrun(args: argparse.Namespace, main: Callable, check: Callable[[int], None]):
    """One process of a ``torchrun`` job: join the process group from torchrun's environment, run the
    checks on rank 0 (the others wait for its verdict), then ``main``."""
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://",
                            timeout=timedelta(minutes=30))
    comm.create_local_process_group(local_world)
    verdict = None
    if comm.is_main_process():
        try:
            check(dist.get_world_size())
        except Exception as err:  # noqa: BLE001 - rank 0 reports it, the others only stop
            verdict = err
    failed = comm.all_gather(verdict is not None)[0]
    if failed:
        if verdict is not None:
            raise verdict
        raise SystemExit(USER_ERROR_EXIT)
    setattr(args, CHECKED, True)
    return run_in_worker(main, args)
