"""Writing run files so that a kill never leaves a half-written one, and telling a user what is wrong
with a file that cannot be read. Shared by both trainers."""
import glob
import hashlib
import os
import pickle
import zipfile
import logging
from typing import Any, List, Optional, Sequence, Type

import torch

logger = logging.getLogger(__name__)

# Temporary files are ``<final name>.tmp.<pid>``: a kill leaves one behind, never a truncated final file.
TMP_INFIX = ".tmp."
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2: legacy torch files and Detectron2's .pkl weights


def _tmp_name(path: str) -> str:
    return f"{path}{TMP_INFIX}{os.getpid()}"


def _replace(tmp: str, path: str) -> None:
    """Flush ``tmp`` to disk, then rename it over ``path`` (atomic on POSIX within one directory)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers see the old file or the
    new one, never a partial one."""
    tmp = _tmp_name(path)
    try:
        torch.save(obj, tmp)
        _replace(tmp, path)
    except Exception:  # e.g. a full disk; a killed process leaves its temp file to the next start
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        _replace(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_orphans(directory: str) -> List[str]:
    """Delete the temporary files a killed writer left in ``directory``; return their paths.

    Called when a run starts, before anything in this run writes one."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), f"*{TMP_INFIX}*")):
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unreadable_reason(path: str, err: Optional[BaseException] = None) -> str:
    """Why ``path`` cannot be loaded, in words ("is empty", "is truncated", ...), from its size, its
    first bytes and the loader's exception."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return f"is truncated ({size} bytes; the end of its zip archive is missing)"
        return f"is a damaged checkpoint ({_short(err)})" if err else "is a damaged checkpoint"
    if head[:1] == _PICKLE_MAGIC:
        if isinstance(err, EOFError) or "truncated" in str(err):
            return f"is truncated ({size} bytes; the pickle ends early)"
        return f"could not be unpickled ({_short(err)})" if err else "could not be unpickled"
    return f"is not a PyTorch or Detectron2 weights file (it starts with {head!r})"


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"


def torch_file_problem(path: str) -> Optional[str]:
    """None if ``path`` is a complete torch zip checkpoint (every member's CRC checks out), else why
    not. Reads the file once without unpickling it: cheap enough to vet each resume candidate."""
    if not os.path.isfile(path):
        return "does not exist"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return unreadable_reason(path)
    return f"is damaged (member {bad!r} fails its CRC check)" if bad else None


# torch.load / pickle.load on a damaged or foreign file raise almost anything (RuntimeError for a broken
# zip, EOFError, UnpicklingError, KeyError or IndexError for random bytes, ...): callers catch it all
# around the load alone and let ``unreadable_reason`` say what is wrong with the file.
LOAD_ERRORS = (Exception,)


def is_weights_only_refusal(err: BaseException) -> bool:
    """torch refused to unpickle an object that is not a tensor or a plain container (``weights_only``)."""
    return isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)


def first_readable_checkpoint(candidates: Sequence[str], error: Type[Exception], start_over: str) -> Optional[str]:
    """The first of ``candidates`` (newest first) that is an intact torch file, with a warning naming the
    damaged ones before it; None without candidates. When every one is damaged, ``error`` lists them,
    followed by ``start_over`` (how to begin again), rather than silently starting over."""
    problems = []
    for path in candidates:
        problem = torch_file_problem(path)
        if problem is None:
            if problems:
                logger.warning("%s; resuming from %s instead", "; ".join(problems), path)
            return path
        problems.append(f"checkpoint {path} {problem}")
    if problems:
        raise error("; ".join(problems) + f": no readable checkpoint to resume from. {start_over}")
    return None
