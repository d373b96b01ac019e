"""The analysis tools (transfer probe, t-SNE, logit correlation) and the target loaders, on tiny fixtures
the tests write: shapes, files written, known answers, and one-line errors for bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cls_fixtures import fashion_dir, tiny_cfg, trained_teacher
from conftest import load_tool
from topkd_det.classification.analysis import AnalysisError, correlation, tsne
from topkd_det.classification.analysis.checkpoints import InputSpec, load_trained, preparer
from topkd_det.classification.analysis.probe import ProbeSettings, train_linear_probe
from topkd_det.classification.analysis.target_data import load_digits, load_stl10, load_tiny_imagenet
from topkd_det.classification.data import DatasetError
from topkd_det.classification.engine import Trainer

TOOLS = ("transfer_probe", "tsne", "logit_correlation")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher and a KD student trained by tools/train_cls.py's trainer on fixture Fashion-MNIST data."""
    tmp = tmp_path_factory.mktemp("analysis_runs")
    data = fashion_dir(tmp)
    teacher = trained_teacher(tmp, data)
    student, _ = tiny_cfg(tmp, data, "SOLVER.EPOCHS", 1, "DISTILL.METHOD", "kd", "MODEL.TEACHER", "fmnist_teacher",
                          "MODEL.TEACHER_WEIGHTS", str(teacher), name="kd")
    Trainer(student).train()
    alone, _ = tiny_cfg(tmp, data, "SOLVER.EPOCHS", 1, name="alone")
    Trainer(alone).train()
    return {name: f"{tmp}/{name}/last.pth" for name in ("teacher", "kd", "alone")}


# -- target loaders ----------------------------------------------------------------------------------
def write_stl10(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    """STL-10's binary layout: uint8 images 3x96x96 stored column-major, labels 1..10."""
    directory = root / "stl10_binary"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        images.transpose(0, 1, 3, 2).tofile(directory / f"{split}_X.bin")  # column-major, as the release
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(directory / f"{split}_y.bin")
        np.save(root / f"{split}_truth.npy", images)
    return root


def write_tiny_imagenet(root: Path, wnids=("n01", "n02", "n03"), per_class: int = 2) -> Path:
    directory = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (directory / "val" / "images").mkdir(parents=True)
    (directory / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, wnid in enumerate(wnids):
        folder = directory / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(  # grey, as some real ones
            directory / "val" / "images" / f"val_{c}.JPEG")
        lines.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (directory / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_stl10_loader_reads_the_column_major_release(tmp_path):
    root = write_stl10(tmp_path)
    data = load_stl10(str(root))
    assert data.train_images.shape == (6, 3, 96, 96) and data.test_images.shape == (4, 3, 96, 96)
    assert torch.equal(data.train_images, torch.from_numpy(np.load(tmp_path / "train_truth.npy")))
    assert data.train_labels.tolist() == [0, 1, 2, 3, 4, 5] and data.num_classes == 10
    assert load_stl10(str(root / "stl10_binary")).test_labels.tolist() == [0, 1, 2, 3]  # the folder itself


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / "test_y.bin").unlink(), "STL-10 not found"),
    (lambda d: (d / "train_X.bin").write_bytes(b"\0" * 1000), "not a whole number of 3x96x96 images"),
    (lambda d: np.array([1, 2], np.uint8).tofile(d / "train_y.bin"), "2 labels for 6 images"),
    (lambda d: np.full(6, 11, np.uint8).tofile(d / "train_y.bin"), "labels must lie in 1..10"),
])
def test_stl10_bad_copies_fail_clearly(tmp_path, damage, fragment):
    damage(write_stl10(tmp_path) / "stl10_binary")
    with pytest.raises(DatasetError, match=fragment):
        load_stl10(str(tmp_path))


def test_tiny_imagenet_loader_reads_train_tree_and_labelled_val(tmp_path):
    data = load_tiny_imagenet(str(write_tiny_imagenet(tmp_path)))
    assert data.train_images.shape == (6, 3, 64, 64) and data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test_images.shape == (3, 3, 64, 64) and data.test_labels.tolist() == [0, 1, 2]
    assert data.num_classes == 3


def _append(path: Path, text: str):
    with open(path, "a") as f:
        f.write(text)


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / "wnids.txt").unlink(), "Tiny-ImageNet not found"),
    (lambda d: _append(d / "wnids.txt", "n99\n"), "class n99 of wnids.txt has no folder"),
    (lambda d: _append(d / "val" / "val_annotations.txt", "val_x.JPEG\tn42\t0\t0\t1\t1\n"), "line 4"),
    (lambda d: (d / "train" / "n01" / "images" / "n01_0.JPEG").write_text("not a jpeg"), "not a readable image"),
    (lambda d: Image.new("RGB", (32, 32)).save(d / "train" / "n02" / "images" / "n02_0.JPEG"), "is 32x32"),
])
def test_tiny_imagenet_bad_copies_fail_clearly(tmp_path, damage, fragment):
    damage(write_tiny_imagenet(tmp_path) / "tiny-imagenet-200")
    with pytest.raises(DatasetError, match=fragment):
        load_tiny_imagenet(str(tmp_path))


def test_digits_are_bundled_and_split_stratified():
    data = load_digits()
    assert data.train_images.shape[1:] == (1, 8, 8) and data.train_images.dtype == torch.uint8
    assert len(data.train_labels) + len(data.test_labels) == 1797 and int(data.train_images.max()) == 255
    assert torch.bincount(data.test_labels).min() >= 80  # every class in the test half


def test_preparer_converts_channels_size_and_normalisation():
    grey = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    out = preparer(InputSpec(3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))(grey)
    assert out.shape == (2, 3, 16, 16) and torch.allclose(out, torch.full_like(out, 2.0))
    rgb = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    rgb[:, 1] = 255  # pure green -> luma 0.587
    out = preparer(InputSpec(1, 4, (0.0,), (1.0,)))(rgb)
    assert out.shape == (1, 1, 4, 4) and torch.allclose(out, torch.full_like(out, 0.587))


# -- known answers -----------------------------------------------------------------------------------
def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (4, 16))
    labels = np.repeat(np.arange(4), 30)
    features = centres[labels] + rng.normal(0, 0.1, (120, 16))
    result = train_linear_probe(features[::2], labels[::2], features[1::2], labels[1::2], 4, ProbeSettings(epochs=20))
    assert result == {"train_top1": 100.0, "test_top1": 100.0}


def test_tsne_separation_of_clusters_and_of_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    clusters = np.array([[0, 0], [30, 0], [0, 30]])[labels] + rng.normal(0, 1, (120, 2))
    good = tsne.separation(clusters, labels)
    assert good["silhouette"] > 0.8 and good["knn5_top1"] == 100.0
    noise = tsne.separation(rng.normal(0, 1, (120, 2)), labels)
    assert abs(noise["silhouette"]) < 0.1 and noise["knn5_top1"] < 60
    assert tsne.embed(clusters, seed=0).shape == (120, 2)


@pytest.mark.parametrize("kind", correlation.MATRICES)
def test_identical_logits_give_zero_difference(kind):
    logits, labels = np.random.default_rng(0).normal(0, 2, (50, 5)), np.arange(50) % 5
    result = correlation.difference(logits, logits.copy(), labels, kind)
    assert result["mean"] == 0.0 and result["max"] == 0.0 and result["diff"].shape == (5, 5)


def test_mean_logit_difference_of_a_shifted_class():
    """Student = teacher + 0.6 on class 2's logit: column 2 of the mean-logit matrix moves by 0.6 in every
    row; the diagonal is zeroed, so 4 of 25 entries are 0.6 / 3.0 = 0.2 -> mean 0.032."""
    teacher, labels = np.random.default_rng(1).normal(0, 2, (50, 5)), np.arange(50) % 5
    student = teacher.copy()
    student[:, 2] += 0.6
    result = correlation.difference(student, teacher, labels, "mean_logit")
    assert result["mean"] == pytest.approx(4 * 0.2 / 25) and result["max"] == pytest.approx(0.2)
    assert result["diff"][2, 2] == 0.0


# -- the tools on trained checkpoints ----------------------------------------------------------------
def _run(tool: str, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool(tool).cli.run(lambda: load_tool(tool).main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("tool", TOOLS)
def test_tools_have_help(tool, capsys):
    with pytest.raises(SystemExit) as info:
        load_tool(tool).main(["--help"])
    assert info.value.code == 0 and "usage" in capsys.readouterr().out


def test_load_trained_restores_the_student_and_how_it_reads_images(runs):
    trained = load_trained(runs["kd"])
    assert trained.cfg.MODEL.STUDENT == "fmnist_student" and not trained.model.training
    assert trained.spec == InputSpec(1, 28, (0.2860,), (0.3530,))


def test_transfer_probe_tool_on_stl10_and_digits(runs, tmp_path, capsys):
    stl = write_stl10(tmp_path / "data")
    code, out, _ = _run("transfer_probe", ["--target", "stl10", "--data-root", str(stl), "--epochs", "3",
                                           "--output-dir", str(tmp_path / "out"), runs["kd"], runs["alone"]], capsys)
    assert code == 0 and "stl10 linear-probe top-1" in out
    results = json.loads((tmp_path / "out" / "transfer_stl10.json").read_text())
    assert [r["model"].split("/")[-1] for r in results] == ["kd", "alone"]  # default: the run folders
    assert all(0 <= r["test_top1"] <= 100 and r["feature_dim"] == 1568 and r["input_size"] == 28 for r in results)
    assert results[0]["train_images"] == 6 and results[0]["test_images"] == 4
    code, out, _ = _run("transfer_probe", ["--target", "digits", "--epochs", "5", "--labels", "KD", "--output-dir",
                                           str(tmp_path / "out"), runs["kd"]], capsys)
    (digits,) = json.loads((tmp_path / "out" / "transfer_digits.json").read_text())
    assert digits["model"] == "KD" and digits["test_top1"] > 50  # real digits, linearly separable enough


def test_tsne_tool_writes_picture_points_and_scores(runs, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, _ = _run("tsne", ["--max-samples", "30", "--output-dir", str(out), "--labels", "KD", "alone",
                                     "--", runs["kd"], runs["alone"]], capsys)
    assert code == 0 and "silhouette" in printed
    assert (out / "tsne.png").stat().st_size > 1000
    lines = (out / "tsne_points.csv").read_text().splitlines()
    assert lines[0] == "model,x,y,label" and len(lines) == 1 + 2 * 30
    scores = json.loads((out / "tsne.json").read_text())
    assert [s["title"] for s in scores] == ["KD", "alone"] and all(-1 <= s["silhouette"] <= 1 for s in scores)


def test_logit_correlation_tool_known_answer_and_teacher_choice(runs, tmp_path, capsys):
    out = tmp_path / "out"
    # The teacher against itself: zero difference everywhere.
    code, _, _ = _run("logit_correlation", ["--teacher", runs["teacher"], "--labels", "self", "--output-dir", str(out),
                                            "--", runs["teacher"]], capsys)
    assert code == 0
    (same,) = json.loads((out / "logit_correlation.json").read_text())
    assert same["mean"] == 0.0 and same["max"] == 0.0
    # A distilled student against its own teacher (from its run's config), and in the pearson form.
    code, printed, _ = _run("logit_correlation", ["--labels", "KD", "--matrix", "pearson", "--output-dir", str(out),
                                                  "--", runs["kd"]], capsys)
    (kd,) = json.loads((out / "logit_correlation.json").read_text())
    assert code == 0 and 0 < kd["mean"] < 1 and kd["max_diff"] == 2.0 and "pearson" in printed
    assert (out / "logit_correlation.png").is_file()
    assert np.loadtxt(out / "logit_correlation_KD.csv", delimiter=",").shape == (10, 10)


# -- one-line errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tool, argv, fragment", [
    ("tsne", ["no/such/last.pth"], "no such checkpoint 'no/such/last.pth'"),
    ("transfer_probe", ["--target", "stl10", "--data-root", "no/such/dir", "RUN"], "STL-10 not found under"),
    ("transfer_probe", ["--target", "tiny_imagenet", "RUN"], "--data-root is needed for tiny_imagenet"),
    ("transfer_probe", ["--target", "digits", "--epochs", "0", "RUN"], "--epochs"),
    ("logit_correlation", ["ALONE"], "trained without a teacher"),
    ("tsne", ["--labels", "a", "b", "--", "RUN"], "--labels gives 2 names for 1 checkpoints"),
    ("tsne", ["NOT_A_RUN"], "not a checkpoint written by tools/train_cls.py"),
])
def test_bad_input_is_one_line_with_exit_status_2(runs, tmp_path, capsys, tool, argv, fragment):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pth")
    swap = {"RUN": runs["kd"], "ALONE": runs["alone"], "NOT_A_RUN": str(tmp_path / "plain.pth")}
    code, _, err = _run(tool, [swap.get(a, a) for a in argv], capsys)
    assert code == 2 and fragment in err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_load_trained_rejects_weights_of_another_architecture(runs, tmp_path):
    state = torch.load(runs["kd"], map_location="cpu", weights_only=False)
    state["config"] = state["config"].replace("STUDENT: fmnist_student", "STUDENT: fmnist_teacher")
    torch.save(state, tmp_path / "mixed.pth")
    with pytest.raises(AnalysisError, match="do not fit 'fmnist_teacher'"):
        load_trained(str(tmp_path / "mixed.pth"))


def test_fashion_mnist_analysis_driver_tabulates_every_tool(runs, tmp_path, capsys):
    import importlib.util
    import shutil

    bench = tmp_path / "bench"
    # The benchmark's layout: the teacher's folder, and each run's folder listed in results.csv.
    for name, source in (("teacher", runs["teacher"]), ("none/seed0-key", runs["alone"]), ("kd/seed0-key", runs["kd"])):
        (bench / name).mkdir(parents=True)
        shutil.copy(source, bench / name / "last.pth")
    (bench / "results.csv").write_text("row,seed,output_dir\n"
                                       f"student alone,0,{bench / 'none/seed0-key'}\nKD,0,{bench / 'kd/seed0-key'}\n")
    spec = importlib.util.spec_from_file_location("cls_analysis", Path(__file__).parents[1] / "benchmarks" / "cls_analysis.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    out = tmp_path / "analysis"
    argv = ["--bench-dir", str(bench), "--methods", "none", "kd", "--seeds", "0", "--tsne-samples", "30",
            "--output-dir", str(out), "--images-dir", str(tmp_path / "img")]
    driver.main(argv)
    table = (out / "results.md").read_text()
    assert "| student alone |" in table and "| KD |" in table and "logit diff, pearson" in table
    assert (tmp_path / "img" / "fmnist_tsne.png").is_file() and (tmp_path / "img" / "fmnist_logit_correlation.png").is_file()
    first = (out / "seed0" / "tsne.json").stat().st_mtime_ns
    driver.main([*argv, "--reuse"])  # finished tool results are kept
    assert (out / "seed0" / "tsne.json").stat().st_mtime_ns == first
