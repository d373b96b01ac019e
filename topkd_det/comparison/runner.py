"""Run planned ``RunSpec``s: finished ones are read back, the others trained ``jobs`` at a time.

With ``jobs`` > 1 each run trains in its own worker process (spawned, ``threads`` torch threads each):
on a 2-core CPU, two single-threaded runs train about 1.5x more iterations per second than one run on
two threads. One bar counts the runs, with the running ones' fractions read from their log files.
With ``jobs`` = 1 the runs train one after another in this process, each with its trainer's own bar.
A killed sweep continues where it stopped: finished runs are read back, a started one resumes from its
last checkpoint (each trainer's ``--resume``).
"""
import importlib
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from .runs import RunResult, RunSpec, cached_result, save_result

OnResult = Callable[[RunSpec, RunResult, bool], None]  # (spec, result, read back from an earlier sweep)
_POLL_SECONDS = 2.0


def backend(task: str):
    """The module that plans, trains and tracks runs of ``task`` (``topkd_det.comparison.<task>``)."""
    return importlib.import_module(f"{__package__}.{task}")


def default_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def execute(spec: RunSpec) -> RunResult:
    """Train (or finish) one run and store its result in its folder."""
    os.makedirs(spec.output_dir, exist_ok=True)
    result = backend(spec.task).execute(spec)
    save_result(spec, result)
    return result


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _progress(spec: RunSpec) -> float:
    return min(max(backend(spec.task).progress(spec), 0.0), 1.0)


def run_all(specs: Sequence[RunSpec], jobs: int = 1, threads: Optional[int] = None,
            on_result: Optional[OnResult] = None, desc: str = "runs") -> List[RunResult]:
    """The result of every spec, in order; ``on_result`` is called as each one is known."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    threads = threads or default_threads(jobs)
    results: Dict[int, RunResult] = {}
    for i, spec in enumerate(specs):
        cached = cached_result(spec)
        if cached is not None:
            results[i] = cached
            if on_result:
                on_result(spec, cached, True)
    todo = [i for i in range(len(specs)) if i not in results]
    if todo:
        (_run_here if jobs == 1 else _run_in_workers)(specs, todo, jobs, threads, results, on_result, desc)
    return [results[i] for i in range(len(specs))]


def _run_here(specs, todo, jobs, threads, results, on_result, desc) -> None:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, i in enumerate(todo):
            tqdm.write(f"[{desc} {n + 1}/{len(todo)}] {specs[i].row}, seed {specs[i].seed} -> {specs[i].output_dir}")
            results[i] = execute(specs[i])
            if on_result:
                on_result(specs[i], results[i], False)
    finally:
        torch.set_num_threads(previous)


def _run_in_workers(specs, todo, jobs, threads, results, on_result, desc) -> None:
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(todo))
    done_before = len(specs) - len(todo)
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool, \
            tqdm(total=len(specs), initial=done_before, desc=f"{desc} ({workers} at a time)", unit="run",
                 dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}]") as bar:
        # The launching process draws one bar for all runs. tqdm reads TQDM_DISABLE when it is imported,
        # which in a spawned worker happens before any initializer runs: the workers inherit it instead.
        previous = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        try:
            futures = {pool.submit(execute, specs[i]): i for i in todo}
        finally:
            if previous is None:
                del os.environ["TQDM_DISABLE"]
            else:
                os.environ["TQDM_DISABLE"] = previous
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            for future in finished:
                i = futures[future]
                error = future.exception()
                if error is not None:
                    for other in pending:  # runs not started yet; the running ones finish (and are kept)
                        other.cancel()
                    raise error
                results[i] = future.result()
                if on_result:
                    on_result(specs[i], results[i], False)
            running = sum(_progress(specs[futures[f]]) for f in pending)
            bar.n = len(results) + running
            bar.refresh()
    tqdm.write(f"{desc}: {len(todo)} run(s) trained in {(time.perf_counter() - start) / 60:.1f} min")
