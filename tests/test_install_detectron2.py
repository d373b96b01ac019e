import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import load_tool

inst = load_tool("install_detectron2")


def _cached_sdist() -> Path:
    path = inst.default_cache_dir() / inst.SDIST_NAME
    if not path.is_file():
        pytest.skip(f"{path} not cached (make setup downloads it unless a Detectron2 was already installed)")
    return path


@pytest.fixture(scope="module")
def pristine_tree(tmp_path_factory) -> Path:
    sdist = _cached_sdist()
    out = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(out, filter="data")
    return next(p for p in out.iterdir() if p.is_dir())


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*.py")}


def test_fixes_apply_then_are_idempotent(pristine_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(pristine_tree, tree)
    before = _snapshot(tree)
    changed = inst.apply_fixes(tree, log=lambda _: None)
    once = _snapshot(tree)
    assert changed >= len(inst.FIXES)
    assert once != before
    assert inst.apply_fixes(tree, log=lambda _: None) == 0
    assert _snapshot(tree) == once


def test_fixed_sources_have_no_removed_apis(pristine_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(pristine_tree, tree)
    inst.apply_fixes(tree, log=lambda _: None)
    text = "\n".join(p.read_text(encoding="utf-8") for p in (tree / "detectron2").rglob("*.py"))
    assert "pkg_resources" not in text
    assert "Image.LINEAR" not in text and "Image.ANTIALIAS" not in text
    for alias in ("np.bool)", "np.int)", "np.float)", "dtype=np.str)"):
        assert alias not in text
    setup_py = (tree / "setup.py").read_text()
    assert "ext_modules=[]" in setup_py and "panopticapi @" not in setup_py


def test_fix_on_unexpected_source_fails_clearly(pristine_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(pristine_tree, tree)
    target = tree / "detectron2/model_zoo/model_zoo.py"
    target.write_text(target.read_text().replace("pkg_resources.resource_filename(", "somewhere_else("))
    with pytest.raises(inst.InstallError, match="model-zoo-without-pkg_resources"):
        inst.apply_fixes(tree, log=lambda _: None)


def test_tampered_sdist_is_refused_and_nothing_installed(tmp_path):
    sdist = _cached_sdist()
    tampered = tmp_path / inst.SDIST_NAME
    data = bytearray(sdist.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(inst.InstallError, match="sha256"):
        inst.verify_sdist(tampered)
    before = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    rc = inst.main(["--sdist", str(tampered), "--force", "--cache-dir", str(tmp_path / "cache")])
    after = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    assert rc == 1
    assert before == after
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.whl"))


def test_existing_detectron2_is_left_alone(capsys):
    assert inst.existing_detectron2() is not None
    assert inst.main([]) == 0
    assert "leaving it alone" in capsys.readouterr().out


def test_missing_sdist_path_is_a_clear_error(tmp_path, capsys):
    rc = inst.main(["--sdist", str(tmp_path / "nope.tar.gz"), "--force", "--cache-dir", str(tmp_path)])
    assert rc == 1
    assert "no such file" in capsys.readouterr().err


def test_unreachable_index_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    rc = inst.main(["--force", "--cache-dir", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot download" in err and "PIP_INDEX_URL" in err
    assert not list(tmp_path.glob("*.whl"))


# --- the official Detectron2 from source (--source) ----------------------------------------------------
VENDOR = sorted((Path(__file__).resolve().parents[2] / "shared" / "vendor").glob("detectron2-*.tar.gz"))


def test_source_install_builds_once_and_is_idempotent(tmp_path, capsys):
    """Against the shared snapshot of official Detectron2 main: compiled ops, cached wheel, no-op rerun.

    The wheel cache is the one `make test-d2main` uses, so the C++ build happens once per source."""
    if not VENDOR:
        pytest.skip("no ../shared/vendor/detectron2-*.tar.gz beside the repository")
    target = tmp_path / "d2"
    assert inst.main(["--source", str(VENDOR[0]), "--target", str(target)]) == 0
    first = capsys.readouterr().out
    assert "installed the official Detectron2 with compiled ops at" in first
    assert list(target.glob("detectron2/_C*.so"))
    assert inst.main(["--source", str(VENDOR[0]), "--target", str(target)]) == 0
    second = capsys.readouterr().out
    assert "already installed" in second and "nothing to do" in second
    assert "pip install" not in second and "building" not in second
    # Only Detectron2 went into the target: its dependencies stay the environment's.
    assert {p.name.split("-")[0] for p in target.glob("*.dist-info")} == {"detectron2"}


def test_source_that_does_not_exist(tmp_path, capsys):
    assert inst.main(["--source", str(tmp_path / "nope.tar.gz"), "--target", str(tmp_path / "t")]) == 1
    assert "--source" in (err := capsys.readouterr().err) and "nope.tar.gz: no such file or directory" in err


def test_source_that_is_not_an_archive(tmp_path, capsys):
    bogus = tmp_path / "detectron2.tar.gz"
    bogus.write_text("not an archive")
    assert inst.main(["--source", str(bogus), "--cache-dir", str(tmp_path / "c"), "--target", str(tmp_path / "t")]) == 1
    assert "neither a directory nor a .tar.gz/.zip archive" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_source_tree_without_detectron2(tmp_path, capsys):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "README").write_text("hello")
    assert inst.main(["--source", str(tmp_path / "tree"), "--cache-dir", str(tmp_path / "c"),
                      "--target", str(tmp_path / "t")]) == 1
    assert "no Detectron2 source tree (setup.py and detectron2/)" in capsys.readouterr().err


def test_target_needs_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        inst.main(["--target", str(tmp_path)])
    assert info.value.code == 2 and "--target needs --source" in capsys.readouterr().err


# --- the default wheel for a machine without a package index (--wheel-dir) -----------------------------
def test_wheel_dir_copies_the_cached_wheel_even_beside_an_installed_detectron2(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel = cache / f"detectron2-0.6-{inst.FIXES_VERSION}-py3-none-any.whl"
    wheel.write_bytes(b"a cached wheel")
    assert inst.existing_detectron2() is not None
    assert inst.main(["--cache-dir", str(cache), "--wheel-dir", str(tmp_path / "wheels")]) == 0
    assert (tmp_path / "wheels" / wheel.name).read_bytes() == b"a cached wheel"
    assert "copied" in capsys.readouterr().out


def test_wheel_dir_is_not_for_source_builds(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        inst.main(["--source", str(tmp_path), "--wheel-dir", str(tmp_path / "w")])
    assert info.value.code == 2 and "--wheel-dir is for the default build" in capsys.readouterr().err
