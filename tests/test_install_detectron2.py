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
