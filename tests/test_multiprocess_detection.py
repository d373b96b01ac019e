"""Detection in several processes: gloo workers on the CPU through Detectron2 main's ``launch`` (0.6's
launch refuses CPU workers: the last test checks that it is refused in one line), several "machines"
on one host, torchrun, and failures. Each test compares weights, files or predictions, against one
process or an uninterrupted run, not only exit codes.

The runs use 1 thread per process (``OMP_NUM_THREADS=1``), so that every way of starting the same
2-rank run computes with the same kernels and ends bitwise equal.
"""
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from detectron2.utils import comm

from conftest import REPO, load_tool
from detection_fixtures import FAMILIES
from run_fixtures import det_config
from topkd_det.data.synthetic_coco import SyntheticConfig, generate, json_path
from topkd_det.detection import engine, tool
from topkd_det.detection.config import load_config
from topkd_det.detection.evaluation import eval_folder

pytestmark = pytest.mark.timeout(900)  # a hang guard only: a quiet 2-core machine runs each test in under a minute
several_cpu_workers = pytest.mark.skipif(not tool.launch_starts_cpu_workers(),
                                         reason="Detectron2 0.6's launch starts several processes on CUDA GPUs only")
train_net = load_tool("train_net")
WORLD = 2
TRAIN, TEST = "mp_shapes_train", "mp_shapes_test"
WHOLE_ITERS = 4
RESUMED_FROM = "model_0000001.pth"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    for key in tool.TORCHRUN_VARIABLES + ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(autouse=True)
def _one_thread_per_process(monkeypatch):
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    for key in tool.TORCHRUN_VARIABLES:
        monkeypatch.delenv(key, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_rectangle_masks(json_file: Path) -> None:
    """Each box's rectangle as its polygon, so that Mask R-CNN students train on the synthetic shapes."""
    data = json.loads(json_file.read_text())
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    json_file.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("mp_data") / "shapes",
                    SyntheticConfig(seed=3, num_train=12, num_val=4, num_test=4, image_size=32,
                                    min_object_size=0.25, max_object_size=0.4), progress=False)
    for split in ("train", "test"):
        _with_rectangle_masks(Path(json_path(root, split)))
    return [[TRAIN, str(json_path(root, "train")), str(root / "train")],
            [TEST, str(json_path(root, "test")), str(root / "test")]]


def _config(tmp: Path, data, name: str, family: str = "faster", **overrides) -> Path:
    """det_config's tiny TopKD student with its data given by DATASETS.COCO_INSTANCES (workers register
    it themselves), 2 images per process, and a checkpoint every iteration."""
    cfg = load_config(det_config(tmp, {"train": TRAIN}, max_iter=WHOLE_ITERS))
    cfg.DATASETS.COCO_INSTANCES = data  # DATASETS.TEST stays empty: no evaluation after training
    cfg.SOLVER.IMS_PER_BATCH = 2 * WORLD
    cfg.merge_from_list([x for kv in {**FAMILIES[family], **overrides}.items() for x in kv])
    path = tmp / f"{name}.yaml"
    path.write_text(cfg.dump())
    return path


def _note_process_group_at_exit(out: Path) -> None:
    # A process group still alive when the interpreter finalises can abort the process (SIGABRT): gloo's
    # threads may still hold tensors then. The workers must have closed it.
    (out / f"process_group_at_exit.{os.getpid()}").write_text(str(dist.is_initialized()))


def _train_and_keep_replicas(args):
    """tools/train_net.py's training, then each rank's own view of the run for the tests to compare."""
    # Importing this module in a worker ran conftest's torch.set_num_threads: back to the CLI's 1 thread.
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    atexit.register(_note_process_group_at_exit, Path(args.opts[args.opts.index("OUTPUT_DIR") + 1]))
    cfg = engine.setup_cfg(args.config_file, args.opts, args, checked=getattr(args, tool.CHECKED, False))
    trainer = engine.DistillTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    ddp = trainer.model
    student = ddp.module if hasattr(ddp, "module") else ddp
    torch.save({"student": student.state_dict(), "teacher": student.teacher.model.state_dict(),
                "teacher_training": student.teacher.model.training,
                "teacher_requires_grad": any(p.requires_grad for p in student.teacher.model.parameters()),
                "ddp_parameters": [name for name, _ in ddp.named_parameters()], "ddp": type(ddp).__name__,
                "checked_by_launcher": getattr(args, tool.CHECKED, False)},
               Path(cfg.OUTPUT_DIR) / f"replica{comm.get_rank()}.pt")


def _launch_in_process(config: Path, out: Path, *opts, main=_train_and_keep_replicas):
    args = train_net.parse_args(["--config-file", str(config), "--num-gpus", str(WORLD), "--dist-url", "auto",
                                 "OUTPUT_DIR", str(out), *map(str, opts)])
    tool.launch_checked(args, main, lambda world: train_net.check(args, world))


def _cli(*args, tool_name="train_net.py", launcher=()):
    return subprocess.run([sys.executable, *launcher, str(REPO / "tools" / tool_name), *map(str, args)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _model(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, data):
    """An uninterrupted 2-process TopKD run with GATHER on, every rank's final view kept."""
    tmp = tmp_path_factory.mktemp("mp_whole")
    config = _config(tmp, data, "topkd", **{"MODEL.DISTILL.TOPKD.GATHER": True})
    out = tmp / "run"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _env().items():
            patch.setenv(key, value)
        _launch_in_process(config, out)
    return {"tmp": tmp, "config": config, "out": out}


@several_cpu_workers
def test_every_rank_ends_with_the_same_student_and_an_untouched_teacher(whole):
    replicas = [torch.load(whole["out"] / f"replica{r}.pt", weights_only=True) for r in range(WORLD)]
    _assert_same_tensors(replicas[0]["student"], replicas[1]["student"])
    # BN statistics (averaged over the ranks) are in that comparison: they drift apart without it.
    assert any(k.endswith("running_mean") for k in replicas[0]["student"])
    teacher_file = torch.load(yaml.safe_load(whole["config"].read_text())["MODEL"]["TEACHER"]["WEIGHTS"],
                              weights_only=True)["model"]
    for replica in replicas:
        assert replica["checked_by_launcher"] is True  # the checks ran once, before the workers started
        assert replica["ddp"] == "DistributedDataParallel"
        assert not any("teacher" in name for name in replica["ddp_parameters"])  # never wrapped, never all-reduced
        assert replica["teacher_training"] is False and replica["teacher_requires_grad"] is False
        _assert_same_tensors(replica["teacher"], {k: teacher_file[k] for k in replica["teacher"]})
    assert sorted(p.read_text() for p in whole["out"].glob("process_group_at_exit*")) == ["False", "False"]
    # The checkpoint is the model every rank holds.
    _assert_same_tensors(_model(whole["out"] / "model_final.pth"), replicas[0]["student"])


@several_cpu_workers
def test_run_files_are_written_once_by_the_main_process(whole):
    out = whole["out"]
    periodic = sorted(p.name for p in out.glob("model_0*.pth"))
    assert periodic == [f"model_{i:07d}.pth" for i in range(WHOLE_ITERS)] and (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (out / "config.yaml").is_file() and not list(out.glob("*.tmp.*"))
    main_log, other_log = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert main_log.count("Saving checkpoint to") == WHOLE_ITERS + 1 and "Saving checkpoint" not in other_log
    assert "all 2 ranks hold the same weights" in main_log and "all 2 ranks hold the same weights" in other_log
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    iterations = [r["iteration"] for r in records if "iteration" in r]
    assert len(iterations) == len(set(iterations)) and iterations
    assert all(torch.isfinite(torch.tensor(r["loss_con"])) for r in records if "loss_con" in r)
    checkpoint = torch.load(out / "model_final.pth", weights_only=True)
    assert checkpoint["world_size"] == WORLD and len(checkpoint["rng"]) == WORLD
    assert checkpoint["rng"][0]["torch"].ne(checkpoint["rng"][1]["torch"]).any()  # each rank's own states


def _interrupted_copy(whole, name: str) -> Path:
    """The whole run's folder as a run killed after its checkpoint at iteration 1."""
    out = whole["tmp"] / name
    shutil.copytree(whole["out"], out)
    keep = {RESUMED_FROM, "config.yaml", "metrics.json", "log.txt", "log.txt.rank1"}
    for path in out.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "last_checkpoint").write_text(RESUMED_FROM)
    return out


@several_cpu_workers
def test_resume_with_the_same_processes_ends_bitwise_equal(whole):
    out = _interrupted_copy(whole, "resumed")
    proc = _cli("--config-file", whole["config"], "--num-gpus", WORLD, "--dist-url", "auto", "--resume",
                "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_tensors(_model(out / "model_final.pth"), _model(whole["out"] / "model_final.pth"))


@several_cpu_workers
def test_resume_with_another_number_of_processes_is_refused_then_accepted_with_the_flag(whole):
    out = _interrupted_copy(whole, "one_process")
    before = sorted(p.name for p in out.iterdir())
    proc = _cli("--config-file", whole["config"], "--resume", "OUTPUT_DIR", out)
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert "processes (--num-gpus x --num-machines): 2 -> 1" in line and "--allow-config-change" in line
    assert sorted(p.name for p in out.iterdir()) == before  # nothing ran

    proc = _cli("--config-file", whole["config"], "--resume", "--allow-config-change", "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    change = [r for r in records if "config_changes" in r][-1]
    assert change["config_changes"] == {"processes (--num-gpus x --num-machines)": [2, 1]}
    assert "RNG states of 2 process(es), this run has 1" in (out / "log.txt").read_text()
    assert torch.load(out / "model_final.pth", weights_only=True)["world_size"] == 1


def _fake_slurm(bin_dir: Path, log: Path) -> None:
    """``scontrol`` naming this host as the job's node, and ``srun`` starting its command once per node
    (here all on this host) with that node's SLURM_NODEID, logging each command line."""
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\n")
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        "while [[ $1 == --* ]]; do shift; done\n"
        "pids=()\n"
        "for ((node = 0; node < SLURM_NNODES; node++)); do\n"
        # xtrace, exported through SHELLOPTS, logs the command each node's shell runs, expanded.
        f"  (export SLURM_NODEID=$node PS4='+ '; set -x; export SHELLOPTS; \"$@\") 2>>{log} &\n"
        "  pids+=($!)\n"
        "done\n"
        "status=0; for pid in \"${pids[@]}\"; do wait $pid || status=1; done; exit $status\n")
    for tool_file in bin_dir.iterdir():
        tool_file.chmod(0o755)


@several_cpu_workers
def test_two_machines_of_one_process_train_the_run_of_one_machine_with_two(whole):
    # tools/slurm/train_net.sbatch under a stand-in srun: two "nodes" on this host, one process each.
    tmp, out = whole["tmp"], whole["tmp"] / "two_machines"
    log = tmp / "srun.log"
    _fake_slurm(tmp / "slurm_bin", log)
    port = _free_port()
    env = dict(_env(), PATH=f"{tmp / 'slurm_bin'}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[0-1]",
               SLURM_NNODES="2", SLURM_JOB_ID="4242", PROCS_PER_NODE="1", MASTER_PORT=str(port),
               PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(REPO))
    proc = subprocess.run(["bash", str(REPO / "tools/slurm/train_net.sbatch"), "--config-file", str(whole["config"]),
                           "OUTPUT_DIR", str(out)], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = [line for line in log.read_text().splitlines() if line.startswith("+ exec") and "train_net.py" in line]
    assert len(commands) == 2
    for rank in range(2):
        assert any(f"--num-gpus 1 --num-machines 2 --machine-rank {rank} --dist-url tcp://127.0.0.1:{port}" in c
                   for c in commands), commands
    _assert_same_tensors(_model(out / "model_final.pth"), _model(whole["out"] / "model_final.pth"))


@several_cpu_workers
def test_torchrun_trains_the_run_of_launch(whole):
    out = whole["tmp"] / "torchrun"
    proc = _cli("--config-file", whole["config"], "OUTPUT_DIR", out,
                launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_tensors(_model(out / "model_final.pth"), _model(whole["out"] / "model_final.pth"))


def _ap_and_predictions(out: Path):
    evaluation = Path(eval_folder(str(out)))  # --eval-only writes its log there, never over the run's own
    log = (evaluation / "log.txt").read_text()
    copypaste = [line.split("copypaste: ")[1] for line in log.splitlines() if "copypaste: " in line]
    predictions = json.loads((evaluation / TEST / "coco_instances_results.json").read_text())
    key = lambda p: (p["image_id"], p["category_id"], -p["score"], p["bbox"])  # noqa: E731
    return copypaste[-1], sorted(predictions, key=key)


@several_cpu_workers
def test_evaluation_in_two_processes_gives_the_results_of_one(whole):
    runs = {}
    for processes in (1, WORLD):
        out = whole["tmp"] / f"eval{processes}"
        proc = _cli("--config-file", whole["config"], "--num-gpus", processes, "--dist-url", "auto", "--eval-only",
                    "MODEL.WEIGHTS", whole["out"] / "model_final.pth", "OUTPUT_DIR", out, "DATASETS.TEST", f"('{TEST}',)",
                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[processes] = _ap_and_predictions(out)
    (ap, predictions), (ap2, predictions2) = runs[1], runs[WORLD]
    assert predictions and {p["image_id"] for p in predictions} == {p["image_id"] for p in predictions2}
    assert len(predictions) == len(predictions2)
    for p, q in zip(predictions, predictions2):
        assert (p["image_id"], p["category_id"]) == (q["image_id"], q["category_id"])
        assert p["score"] == pytest.approx(q["score"], abs=1e-5)
    assert ap == ap2


@several_cpu_workers
def test_cascade_mask_student_trains_in_two_processes(tmp_path, data):
    config = _config(tmp_path, data, "cascade_mask", "cascade", **FAMILIES["mask"],
                     **{"SOLVER.MAX_ITER": 2, "SOLVER.STEPS": (1,)})
    _launch_in_process(config, tmp_path / "run")
    replicas = [torch.load(tmp_path / "run" / f"replica{r}.pt", weights_only=True) for r in range(WORLD)]
    _assert_same_tensors(replicas[0]["student"], replicas[1]["student"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()]
    assert any("loss_mask" in r and "loss_con_stage2" in r for r in records)


@several_cpu_workers
def test_lazy_config_trains_in_two_processes(tmp_path, data):
    from detectron2.modeling import build_model

    teacher_weights = tmp_path / "teacher.pth"
    torch.save({"model": build_model(load_config(REPO / "configs/embedded/teacher.yaml")).state_dict()}, teacher_weights)
    # A LazyConfig registers its own data in its file, which every process runs.
    config = tmp_path / "topkd_mine.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        "from detectron2.data import DatasetCatalog\n"
        "from detectron2.data.datasets import register_coco_instances\n"
        f"if {TRAIN!r} not in DatasetCatalog.list():\n"
        f"    register_coco_instances({TRAIN!r}, {{}}, {data[0][1]!r}, {data[0][2]!r})\n"
        f"_embedded = LazyConfig.load({str(REPO / 'configs/embedded/topkd.py')!r})\n"
        "model, dataloader, optimizer, lr_multiplier, train = (\n"
        "    _embedded[k] for k in ('model', 'dataloader', 'optimizer', 'lr_multiplier', 'train'))\n")
    out = tmp_path / "run"
    proc = _cli("--config-file", config, "--num-gpus", WORLD, "--dist-url", "auto",
                f"dataloader.train.dataset.names={TRAIN}", "dataloader.test.dataset.names=[]",
                f"model.teacher.weights={teacher_weights}", f"train.output_dir={out}", "train.max_iter=2",
                "train.eval_period=0", tool_name="lazyconfig_train_net.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file() and (out / "last_checkpoint").read_text() == "model_final.pth"
    assert "all 2 ranks hold the same weights" in (out / "log.txt").read_text()


# --- failures -----------------------------------------------------------------------------------------
def _fail_on_rank_1(args):
    if comm.get_rank() == 1:
        raise ValueError("a bad value that only rank 1 saw")
    comm.synchronize()  # rank 0 waits for rank 1, which never comes


def _killed_on_rank_1(args):
    if comm.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    comm.synchronize()


@several_cpu_workers
@pytest.mark.parametrize("main, exit_code, says", [
    (_fail_on_rank_1, 2, "error: rank 1 of 2: a bad value that only rank 1 saw"),
    (_killed_on_rank_1, 1, "error: rank 1 of 2 was killed by signal SIGKILL"),
])
def test_a_failing_worker_ends_the_run_in_one_line_naming_its_rank(tmp_path, data, capfd, main, exit_code, says):
    config = _config(tmp_path, data, "student", **{"MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
                                                   "MODEL.DISTILL.METHOD": "none"})
    with pytest.raises(SystemExit) as ended:
        _launch_in_process(config, tmp_path / "run", main=main)
    assert ended.value.code == exit_code
    (line,) = _error_lines(capfd.readouterr().err)
    assert line.startswith(says)


@several_cpu_workers
@pytest.mark.parametrize("opts, says", [
    (["MODEL.DISTILL.TOPKD.K", 20], "MODEL.DISTILL.TOPKD.K=20 is invalid for C=25 classes"),
    (["SOLVER.IMS_PER_BATCH", 3], "SOLVER.IMS_PER_BATCH 3 cannot be split over 2 processes"),
])
def test_a_bad_config_is_refused_before_any_worker_starts(tmp_path, data, opts, says):
    config = _config(tmp_path, data, "topkd")
    proc = _cli("--config-file", config, "--num-gpus", WORLD, "--dist-url", "auto", "OUTPUT_DIR", tmp_path / "run",
                *opts)
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert says in line
    assert not (tmp_path / "run").exists()  # no worker ran, not even default_setup's dump


@pytest.mark.skipif(tool.launch_starts_cpu_workers() or torch.cuda.is_available(),
                    reason="this Detectron2's launch starts CPU workers")
def test_detectron2_0_6_refuses_cpu_workers_in_one_line_naming_the_official_build(tmp_path):
    config = det_config(tmp_path, {"train": TRAIN}, method="none")
    proc = _cli("--config-file", config, "--num-gpus", WORLD, "OUTPUT_DIR", tmp_path / "run")
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert "--num-gpus 2" in line and "CUDA GPUs only" in line and "official Detectron2 (main)" in line
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
