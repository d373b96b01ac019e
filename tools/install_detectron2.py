#!/usr/bin/env python
"""Install Detectron2 into the running Python environment, unless one is already importable.

Detectron2 has no PyPI release. Upstream v0.6's Python sources are on PyPI as the sdist
``pb1-detectron2==0.6``, but that sdist builds a C++/CUDA extension and targets the 2021 stack.
This script turns it into a pure-Python wheel that runs with today's torch, numpy and Pillow:

1. leave an existing Detectron2 alone (an official build from source is what GPU users have);
2. take the sdist from the local cache, a path given with ``--sdist``, or the package index,
   and refuse it unless its sha256 is the pinned one;
3. unpack it in a temporary directory and apply the small, idempotent fixes in ``FIXES``;
4. build the wheel (``pip wheel --no-build-isolation``: setup.py imports torch), check that it
   carries the model-zoo configs, cache it, and only then ``pip install`` it.

Any failure before step 4 leaves the environment untouched. A re-install from the cached wheel
takes seconds.

``--source PATH`` instead installs the *official* Detectron2 from its source (the GitHub archive,
``.tar.gz``/``.zip``, or an unpacked tree), with its compiled C++ operators, for machines that
cannot reach GitHub: the wheel is built once (``pip wheel --no-build-isolation``, about a minute on
2 cores), cached under the source's sha256, and installed into this environment, replacing another
Detectron2, or with ``--target DIR`` into a folder to put on ``PYTHONPATH``. Run again with the same
source, it finds that build installed and does nothing.

Usage:
    python tools/install_detectron2.py [--sdist FILE] [--cache-dir DIR] [--force] [-c CONSTRAINTS]
    python tools/install_detectron2.py --source detectron2-main.tar.gz [--target DIR] [--cache-dir DIR]

This script runs before the package is installed, so it imports nothing from topkd_det.

Documentation: docs/detectron2_builds.md
"""
import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SDIST_PROJECT = "pb1-detectron2"
DEFAULT_INDEX = "https://pypi.org/simple"
# Part of the cached wheel's name: bump it whenever FIXES change, so a stale wheel is never reused.
FIXES_VERSION = "1"
ZOO_CONFIG_IN_WHEEL = "detectron2/model_zoo/configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"


class InstallError(RuntimeError):
    """A step failed; the message says which one and what to do about it."""


@dataclass(frozen=True)
class Fix:
    """One edit of the unpacked sdist.

    ``edit`` maps a file's text to its fixed text. It must be idempotent, and on a pristine
    sdist it must change every file in ``files`` (a fix that matches nothing means the sdist is
    not the one the fix was written for, which is an error, not a silent no-op).
    """

    name: str
    why: str
    files: List[str]
    edit: Callable[[str], str]
    is_applied: Callable[[str], bool]


def _sub(pattern: str, repl: str) -> Callable[[str], str]:
    return lambda text: re.sub(pattern, repl, text)


_OPTIONAL_C = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # pure-Python build: rotated/deformable ops and the fast COCOeval are off\n"
    "    _C = None\n"
)
_COCOEVAL_FALLBACK = (
    "from detectron2.evaluation.fast_eval_api import COCOeval_opt, _C as _fast_eval_C\n"
    "\n"
    "if _fast_eval_C is None:  # pure-Python build: use the official pycocotools COCOeval\n"
    "    COCOeval_opt = COCOeval\n"
)
_NUMPY_ALIAS_RE = r"\bnp\.(bool|int|float|str|object)\b(?!_)"
_ZOO_CONFIG_PATH = 'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)'
_PIL_CONSTANTS = {"LINEAR": "BILINEAR", "CUBIC": "BICUBIC", "ANTIALIAS": "LANCZOS"}
_PIL_RE = r"\bImage\.(LINEAR|CUBIC|ANTIALIAS)\b"

FIXES: List[Fix] = [
    Fix(
        name="no-extension",
        why="The sdist has no C++ sources: build no extension, so the wheel is pure Python.",
        files=["setup.py"],
        edit=lambda t: t.replace("ext_modules=get_extensions(),", "ext_modules=[],").replace(
            '    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n', ""
        ),
        is_applied=lambda t: "ext_modules=[]," in t and "BuildExtension}" not in t,
    ),
    Fix(
        name="distribution-name",
        why="Call the distribution 'detectron2', as an official build from source is, so that "
        "a 'detectron2' requirement (topkd_det's setup.py) is satisfied by either.",
        files=["setup.py"],
        edit=lambda t: t.replace('name="pb1-detectron2",', 'name="detectron2",'),
        is_applied=lambda t: 'name="detectron2",' in t,
    ),
    Fix(
        name="zoo-configs-in-wheel",
        why="setup.py globs configs/ at the top level, which the sdist lacks; the YAMLs live in "
        "detectron2/model_zoo/configs and must be package data.",
        files=["setup.py"],
        edit=_sub(
            r'package_data=\{"detectron2\.model_zoo": get_model_zoo_configs\(\)\}',
            'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}',
        ),
        is_applied=lambda t: '["configs/**/*.yaml", "configs/**/*.py"]' in t,
    ),
    Fix(
        name="installable-requirements",
        why="pip >= 26.3 refuses the 'panopticapi @ github' URL extra, and black==21.4b2 (used only "
        "by LazyConfig.save) does not install on Python 3.11.",
        files=["setup.py"],
        edit=lambda t: re.sub(r'\n\s*"panopticapi @ [^"]*",', "", t).replace(
            '"black==21.4b2",', '"black",'
        ),
        is_applied=lambda t: "panopticapi @" not in t and '"black==21.4b2"' not in t,
    ),
    Fix(
        name="optional-C-extension",
        why="Make 'from detectron2 import _C' optional; only rotated boxes, deformable conv and "
        "the fast COCOeval need it.",
        files=[
            "detectron2/layers/rotated_boxes.py",
            "detectron2/layers/deform_conv.py",
            "detectron2/layers/roi_align_rotated.py",
            "detectron2/evaluation/fast_eval_api.py",
        ],
        edit=lambda t: t if _OPTIONAL_C in t else t.replace("from detectron2 import _C\n", _OPTIONAL_C, 1),
        is_applied=lambda t: _OPTIONAL_C in t,
    ),
    Fix(
        name="official-cocoeval-fallback",
        why="Without _C, COCOEvaluator must score with pycocotools' official COCOeval.",
        files=["detectron2/evaluation/coco_evaluation.py"],
        edit=lambda t: t
        if _COCOEVAL_FALLBACK in t
        else t.replace("from detectron2.evaluation.fast_eval_api import COCOeval_opt\n", _COCOEVAL_FALLBACK, 1),
        is_applied=lambda t: _COCOEVAL_FALLBACK in t,
    ),
    Fix(
        name="model-zoo-without-pkg_resources",
        why="pkg_resources is gone from setuptools >= 81 (which torch pulls in); the configs sit "
        "next to model_zoo.py, so a path join finds them.",
        files=["detectron2/model_zoo/model_zoo.py"],
        edit=lambda t: re.sub(
            r"pkg_resources\.resource_filename\(\s*\"detectron2\.model_zoo\", os\.path\.join\(\"configs\", config_path\)\s*\)",
            _ZOO_CONFIG_PATH,
            t,
        ).replace("import pkg_resources\n", ""),
        is_applied=lambda t: "pkg_resources" not in t and _ZOO_CONFIG_PATH in t,
    ),
    Fix(
        name="numpy-aliases",
        why="np.bool/np.int/np.float/np.str/np.object were removed in numpy 1.24.",
        files=[
            "detectron2/evaluation/pascal_voc_evaluation.py",
            "detectron2/evaluation/sem_seg_evaluation.py",
            "detectron2/structures/masks.py",
            "detectron2/data/datasets/pascal_voc.py",
            "detectron2/data/build.py",
            "detectron2/utils/visualizer.py",
            "detectron2/utils/video_visualizer.py",
        ],
        edit=lambda t: re.sub(_NUMPY_ALIAS_RE, r"\1", t),
        is_applied=lambda t: re.search(_NUMPY_ALIAS_RE, t) is None,
    ),
    Fix(
        name="pillow-constants",
        why="Image.LINEAR/CUBIC/ANTIALIAS were removed in Pillow 10 and are read at import time.",
        files=["detectron2/data/transforms/transform.py"],
        edit=lambda t: re.sub(_PIL_RE, lambda m: "Image." + _PIL_CONSTANTS[m.group(1)], t),
        is_applied=lambda t: re.search(_PIL_RE, t) is None,
    ),
]


def apply_fixes(src_root: Path, fixes: List[Fix] = FIXES, log: Callable[[str], None] = print) -> int:
    """Apply every fix under ``src_root``; return how many files changed.

    Running it again on a fixed tree changes nothing. A fix whose target file is missing, or
    that neither applies nor is already applied, raises InstallError.
    """
    changed = 0
    for fix in fixes:
        for rel in fix.files:
            path = src_root / rel
            if not path.is_file():
                raise InstallError(f"fix '{fix.name}': {rel} is missing from the sdist in {src_root}")
            text = path.read_text(encoding="utf-8")
            new = fix.edit(text)
            if not fix.is_applied(new):
                raise InstallError(
                    f"fix '{fix.name}' did not apply to {rel}: the sdist is not the expected "
                    f"{SDIST_NAME}. ({fix.why})"
                )
            if new != text:
                path.write_text(new, encoding="utf-8")
                changed += 1
        log(f"  fix {fix.name}: ok")
    return changed


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sdist(path: Path, expected: str = SDIST_SHA256) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise InstallError(
            f"{path}: sha256 is {actual}, expected {expected}. The file is not the published "
            f"{SDIST_NAME}; delete it and run again to download a fresh copy."
        )


def default_cache_dir() -> Path:
    env = os.environ.get("TOPKD_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "topkd_det"


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def download_sdist(dest: Path) -> None:
    """Find the sdist's link on the package index (PEP 503 page) and download it to ``dest``."""
    page_url = f"{_index_url()}/{SDIST_PROJECT}/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as r:
            page = r.read().decode("utf-8", "replace")
        match = re.search(r'href="([^"]*' + re.escape(SDIST_NAME) + r')[^"]*"', page)
        if not match:
            raise InstallError(f"{page_url} lists no {SDIST_NAME}; pass a local copy with --sdist FILE")
        url = urllib.parse.urljoin(page_url, match.group(1))
        tmp = dest.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise InstallError(
            f"cannot download {SDIST_NAME} from {page_url} ({e}). Connect to the package index, "
            f"set PIP_INDEX_URL to a mirror, or pass a local copy with --sdist FILE."
        ) from e


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    if sys.version_info >= (3, 12) or hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not str(target).startswith(str(dest.resolve())):
            raise InstallError(f"refusing a path outside the archive root: {member.name}")
    tar.extractall(dest)


def build_wheel(sdist: Path, out_dir: Path, log: Callable[[str], None] = print) -> Path:
    with tempfile.TemporaryDirectory(prefix="d2-build-") as tmp:
        tmp = Path(tmp)
        with tarfile.open(sdist) as tar:
            _safe_extract(tar, tmp)
        roots = [p for p in tmp.iterdir() if p.is_dir()]
        if len(roots) != 1:
            raise InstallError(f"{sdist}: expected one top-level directory, found {len(roots)}")
        log(f"applying {len(FIXES)} compatibility fixes")
        apply_fixes(roots[0], log=log)
        wheel_dir = tmp / "wheel"
        log("building the pure-Python wheel")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(wheel_dir), str(roots[0])],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise InstallError(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
        wheels = list(wheel_dir.glob("*.whl"))
        if len(wheels) != 1:
            raise InstallError(f"pip wheel produced {len(wheels)} wheels, expected 1")
        check_wheel(wheels[0])
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / wheels[0].name.replace("-py3-", f"-{FIXES_VERSION}-py3-", 1)
        tmp_final = final.with_suffix(".part")
        shutil.copyfile(wheels[0], tmp_final)
        os.replace(tmp_final, final)
        return final


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    if ZOO_CONFIG_IN_WHEEL not in names:
        raise InstallError(f"{wheel.name} lacks {ZOO_CONFIG_IN_WHEEL}: the model-zoo configs were not packaged")
    if any(n.endswith((".so", ".pyd")) for n in names):
        raise InstallError(f"{wheel.name} carries a compiled extension; expected a pure-Python wheel")


def cached_wheel(cache: Path) -> Optional[Path]:
    found = sorted(cache.glob(f"detectron2-0.6-{FIXES_VERSION}-py3-none-any.whl"))
    return found[-1] if found else None


def existing_detectron2() -> Optional[str]:
    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        return None
    return next(iter(spec.submodule_search_locations or []), spec.origin)


def obtain_sdist(cache: Path, given: Optional[Path], log: Callable[[str], None]) -> Path:
    if given is not None:
        if not given.is_file():
            raise InstallError(f"--sdist {given}: no such file")
        verify_sdist(given)
        return given
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / SDIST_NAME
    if not path.is_file():
        log(f"downloading {SDIST_NAME} from {_index_url()}")
        download_sdist(path)
    verify_sdist(path)
    return path


# --- official Detectron2 from source -----------------------------------------------------------
SOURCE_BUILD_PREFIX = "0src"  # wheel build tag of a --source build: must start with a digit


def source_key(source: Path) -> str:
    """sha256 of an archive's bytes, or of a tree's file names and contents: the cache key of its wheel."""
    if source.is_file():
        return sha256_of(source)
    h = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and ".git" not in p.parts):
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def unpack_source(source: Path, dest: Path) -> Path:
    """The Detectron2 tree inside ``source`` (an archive is unpacked into ``dest``)."""
    if source.is_dir():
        root = source
    else:
        if tarfile.is_tarfile(source):
            with tarfile.open(source) as tar:
                _safe_extract(tar, dest)
        elif zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as z:
                z.extractall(dest)
        else:
            raise InstallError(f"--source {source}: neither a directory nor a .tar.gz/.zip archive")
        tops = [p for p in dest.iterdir() if p.is_dir()]
        root = tops[0] if len(tops) == 1 else dest
    if not (root / "setup.py").is_file() or not (root / "detectron2" / "__init__.py").is_file():
        raise InstallError(f"--source {source}: no Detectron2 source tree (setup.py and detectron2/) found in it")
    return root


def cached_source_wheel(cache: Path, key: str) -> Optional[Path]:
    found = sorted(cache.glob(f"detectron2-*-{SOURCE_BUILD_PREFIX}{key[:16]}-*.whl"))
    return found[-1] if found else None


def build_source_wheel(source: Path, key: str, cache: Path, log: Callable[[str], None]) -> Path:
    if importlib.util.find_spec("torch") is None:
        raise InstallError("Detectron2's setup.py needs torch: install torch and torchvision first")
    with tempfile.TemporaryDirectory(prefix="d2-source-") as tmp:
        tmp = Path(tmp)
        root = unpack_source(source, tmp / "src")
        log(f"building Detectron2 with its C++ operators from {root.name} (about a minute per core)")
        wheel_dir = tmp / "wheel"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(wheel_dir), str(root)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise InstallError(f"pip wheel of {source} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        wheels = list(wheel_dir.glob("*.whl"))
        if len(wheels) != 1:
            raise InstallError(f"pip wheel produced {len(wheels)} wheels, expected 1")
        with zipfile.ZipFile(wheels[0]) as z:
            if not any(n.startswith("detectron2/_C") for n in z.namelist()):
                raise InstallError(f"{wheels[0].name} has no compiled detectron2/_C: the C++ build was skipped")
        name, version, rest = wheels[0].name.split("-", 2)
        final = cache / f"{name}-{version}-{SOURCE_BUILD_PREFIX}{key[:16]}-{rest}"
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheels[0], final.with_suffix(".part"))
        os.replace(final.with_suffix(".part"), final)
        return final


def installed_detectron2(target: Optional[Path]):
    """The ``detectron2`` distribution installed in ``target`` (or on this environment's path), if any."""
    where = {"path": [str(target)]} if target is not None else {}
    return next(iter(importlib.metadata.distributions(name="detectron2", **where)), None)


def installed_wheel_name(dist) -> Optional[str]:
    """The wheel file a distribution was installed from (pip records it in direct_url.json)."""
    text = dist.read_text("direct_url.json") if dist is not None else None
    if not text:
        return None
    return urllib.parse.unquote(json.loads(text).get("url", "")).rsplit("/", 1)[-1] or None


def check_compiled_ops(target: Optional[Path]) -> str:
    """Import the installed Detectron2 and its ``_C`` in a fresh interpreter; return its location."""
    env = dict(os.environ)
    if target is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(target)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-c", "import detectron2, detectron2._C; print(detectron2.__file__)"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise InstallError(f"the installed Detectron2 does not import with its compiled ops:\n{proc.stderr[-2000:]}")
    return str(Path(proc.stdout.strip()).parent)


def install_from_source(source: Path, target: Optional[Path], cache: Path, constraint: Optional[Path],
                        log: Callable[[str], None]) -> None:
    if not source.exists():
        raise InstallError(f"--source {source}: no such file or directory")
    key = source_key(source)
    log(f"source {source} (sha256 {key[:16]}...)")
    dist = installed_detectron2(target)
    where = f"--target {target}" if target is not None else "this environment"
    wheel_name = installed_wheel_name(dist)
    if wheel_name and f"-{SOURCE_BUILD_PREFIX}{key[:16]}-" in wheel_name:
        log(f"Detectron2 from this source is already installed in {where} ({wheel_name}); nothing to do")
        check_compiled_ops(target)
        return
    if dist is not None:
        log(f"found Detectron2 {dist.version} in {where} ({wheel_name or 'not from this source'}); replacing it")
    wheel = cached_source_wheel(cache, key)
    if wheel is not None:
        log(f"using cached wheel {wheel}")
    else:
        wheel = build_source_wheel(source, key, cache, log)
        log(f"built and cached {wheel}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--force-reinstall"]
    if target is not None:
        # Its dependencies are this environment's (requirements/runtime.txt); only Detectron2 goes there.
        cmd += ["--no-deps", "--upgrade", "--target", str(target)]
    elif constraint is not None:
        cmd += ["-c", str(constraint)]
    log("pip install " + wheel.name + (f" --target {target}" if target is not None else ""))
    if subprocess.run(cmd + [str(wheel)]).returncode != 0:
        raise InstallError(f"pip install {wheel} failed (see pip's output above)")
    log(f"installed the official Detectron2 with compiled ops at {check_compiled_ops(target)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=Path, help=f"a local copy of {SDIST_NAME} (checked by sha256)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $TOPKD_CACHE or ~/.cache/topkd_det")
    parser.add_argument("--force", action="store_true", help="install even if a Detectron2 is importable")
    parser.add_argument("-c", "--constraint", type=Path, help="pip constraints file for Detectron2's dependencies")
    parser.add_argument("--source", type=Path, help="install the official Detectron2 from this source archive "
                        "(.tar.gz/.zip, e.g. GitHub's) or tree, with its compiled ops")
    parser.add_argument("--target", type=Path, help="with --source: install into this folder (to put on "
                        "PYTHONPATH) instead of the environment")
    parser.add_argument("--wheel-dir", type=Path, help="put the default pure-Python wheel (built or cached) in "
                        "this folder instead of installing it, for a machine without a package index")
    args = parser.parse_args(argv)
    log = lambda msg: print(f"[install_detectron2] {msg}", flush=True)  # noqa: E731
    if args.target is not None and args.source is None:
        parser.error("--target needs --source")
    if args.wheel_dir is not None and args.source is not None:
        parser.error("--wheel-dir is for the default build; --source installs the official one")
    if args.source is not None:
        try:
            install_from_source(args.source, args.target, args.cache_dir or default_cache_dir(), args.constraint, log)
        except InstallError as e:
            print(f"[install_detectron2] ERROR: {e}", file=sys.stderr)
            return 1
        return 0

    found = existing_detectron2()
    if found and not args.force and args.wheel_dir is None:
        log(f"Detectron2 is already importable from {found}; leaving it alone")
        return 0
    cache = args.cache_dir or default_cache_dir()
    try:
        wheel = None if args.sdist else cached_wheel(cache)
        if wheel is None:
            sdist = obtain_sdist(cache, args.sdist, log)
            wheel = build_wheel(sdist, cache, log)
        else:
            log(f"using cached wheel {wheel}")
        if args.wheel_dir is not None:
            args.wheel_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wheel, args.wheel_dir / wheel.name)
            log(f"copied {wheel.name} to {args.wheel_dir}")
            return 0
        cmd = [sys.executable, "-m", "pip", "install", "-q", str(wheel)]
        if args.constraint:
            cmd += ["-c", str(args.constraint)]
        log("pip install " + wheel.name)
        if subprocess.run(cmd).returncode != 0:
            raise InstallError(f"pip install {wheel} failed (see pip's output above)")
    except InstallError as e:
        print(f"[install_detectron2] ERROR: {e}", file=sys.stderr)
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
