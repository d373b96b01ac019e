"""What the analysis tools share on the command line: one-line errors and the output folder."""
import json
import os
import sys
from typing import Callable

from ...config_io import ConfigError
from ..checkpoint import WeightsError
from ..data import DatasetError
from . import AnalysisError

USER_ERRORS = (AnalysisError, DatasetError, ConfigError, WeightsError)


def run(main: Callable[[], int]) -> None:
    """Run a tool's ``main``; a user's mistake ends as one ``error:`` line on stderr and exit status 2."""
    try:
        sys.exit(main())
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def output_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise AnalysisError(f"--output-dir {path!r} cannot be created ({err.strerror})") from None
    return path


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def labels_for(checkpoints, labels):
    """Display names: --labels if given (one per checkpoint), else the checkpoint's last two folders
    (``output/cls_bench/kd/seed0/last.pth`` -> ``kd/seed0``)."""
    if labels and len(labels) != len(checkpoints):
        raise AnalysisError(f"--labels gives {len(labels)} names for {len(checkpoints)} checkpoints")
    if labels:
        return list(labels)
    return ["/".join(os.path.dirname(os.path.abspath(c)).split(os.sep)[-2:]) for c in checkpoints]
