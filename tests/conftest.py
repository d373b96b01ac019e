import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
# Tests are timed on 2 cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_tool(name: str):
    """Import tools/<name>.py (tools/ is scripts, not a package)."""
    path = REPO / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def single_thread():
    """Small-batch forwards gain nothing from intra-op threads, while OpenMP barriers on a busy 2-core
    machine cost several times the work itself (measured: ~5x slower on 2 threads with other load).
    Modules of such tests take it with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def det_run_names(tmp_path_factory):
    """The 12-image synthetic detection dataset of tests/run_fixtures.py, registered once per session."""
    from run_fixtures import det_data

    return det_data(tmp_path_factory.mktemp("det_run_data") / "shapes")
