"""How much Top-K structure do the two cached teachers' logits carry?

    OMP_NUM_THREADS=1 python benchmarks/teacher_topk_structure.py
    python benchmarks/teacher_topk_structure.py --det-batches 50 --det-split train
    python benchmarks/teacher_topk_structure.py --student-weights ""    # the untrained student only

Classification: the cached Fashion-MNIST teacher (benchmarks/cls_accuracy.py) on the 5k held-out val
images, unaugmented. Detection: the embedded demo's cached teacher (configs/embedded/teacher.yaml) on
the rows DistillRCNN distills, i.e. its class logits on the student's sampled proposals (foreground
and background), taken from --det-batches training batches of --det-split through Detectron2's
training data path. Those proposals depend on the student's RPN, so each --student-weights ("" = the
student at initialisation) gets its own rows. Per part one markdown table, printed and written to --output.

Columns: top-1 accuracy; entropy of the softmax (nats); mass@K, the mean softmax probability in the
teacher's top-K; hit@K, rows whose label is in the top-K; rescue@K, rows whose top-1 is wrong but
whose label is in the top-K (= hit@K - top-1, so K = 1 is left out).
"""
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.data import build_splits, collate_batch  # noqa: E402
from topkd_det.classification.distiller import build_teacher  # noqa: E402
from topkd_det.classification.metrics import topk_correct  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.data.synthetic_coco import SyntheticConfig  # noqa: E402
from topkd_det.detection import embedded  # noqa: E402
from topkd_det.detection.engine import DistillTrainer  # noqa: E402
from topkd_det.reporting import markdown_table  # noqa: E402

CLS_KS = (1, 2, 3, 4)
DET_KS = (1, 3, 5, 11)  # 11 is the largest K TopKD allows for C+1 = 25 (benchmarks/det_ablation.py)


def topk_stats(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> Dict[str, float]:
    """Top-K structure of ``logits`` (N, C) against ``labels`` (N,), averaged over the rows:
    ``rows``, ``top1`` (%), ``entropy`` (nats) and, for each k, ``mass@k`` (softmax probability in
    the top-k), ``hit@k`` (%, label in the top-k) and ``rescue@k`` (%, top-1 wrong but label in the top-k)."""
    if not len(labels):
        raise ValueError("topk_stats needs at least one row")
    if not all(1 <= k <= logits.shape[1] for k in ks):
        raise ValueError(f"every K must lie in [1, {logits.shape[1]}] (the class count), got {list(ks)}")
    logits = logits.double()
    probs = logits.softmax(dim=1)
    hits = {k: v.item() for k, v in topk_correct(logits, labels, ks=(1, *ks)).items()}
    top_mass = probs.topk(max(ks), dim=1).values.cumsum(dim=1)
    stats = {"rows": len(labels), "top1": hits["top1"],
             "entropy": torch.distributions.Categorical(probs=probs).entropy().mean().item()}
    for k in ks:
        stats[f"mass@{k}"] = top_mass[:, k - 1].mean().item()
        stats[f"hit@{k}"] = hits[f"top{k}"]
        stats[f"rescue@{k}"] = hits[f"top{k}"] - hits["top1"]
    return stats


def table_columns(ks: Sequence[int]) -> List[str]:
    return (["rows", "top-1 %", "entropy"] + [f"mass@{k}" for k in ks]
            + [f"hit@{k} %" for k in ks if k > 1] + [f"rescue@{k} %" for k in ks if k > 1])


def table_row(stats: Dict[str, float], ks: Sequence[int]) -> Dict[str, str]:
    row = {"rows": str(stats["rows"]), "top-1 %": f"{stats['top1']:.2f}", "entropy": f"{stats['entropy']:.3f}"}
    for k in ks:
        row[f"mass@{k}"] = f"{stats[f'mass@{k}']:.3f}"
        row[f"hit@{k} %"] = f"{stats[f'hit@{k}']:.2f}"
        row[f"rescue@{k} %"] = f"{stats[f'rescue@{k}']:.2f}"
    return row


@torch.no_grad()
def classification_logits(teacher_weights: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits on the val split, built as a distillation run builds them."""
    cfg = load_cls_cfg(str(REPO / "configs" / "fashion_mnist" / "topkd.yaml"),
                       ["MODEL.TEACHER_WEIGHTS", teacher_weights])
    teacher = build_teacher(cfg)
    loader = DataLoader(build_splits(cfg).val, batch_size=cfg.TEST.BATCH_SIZE, collate_fn=collate_batch)
    logits, labels = zip(*((teacher(x), y) for x, y in loader))
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def detection_rows(args, student_weights: str) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(teacher logits, labels, background index) of the rows DistillRCNN hands its loss over
    ``args.det_batches`` training steps (no optimizer step, so every batch sees the same student)."""
    data_config = SyntheticConfig()
    data = embedded.prepare_data(args.data_root, data_config, progress=False)
    cfg = embedded.load_config(embedded.CONFIG_DIR / "topkd.yaml", embedded.size_opts(data_config.image_size) + [
        "MODEL.TEACHER.CONFIG_FILE", args.det_teacher_config, "MODEL.TEACHER.WEIGHTS", args.det_teacher_weights])
    cfg.DATASETS.TRAIN = (data.names[args.det_split],)
    cfg.freeze()
    # Same init, images, flips and proposal sampling for every student.
    seed_all_rng(args.seed)
    model = DistillTrainer.build_model(cfg)
    if student_weights:
        DetectionCheckpointer(model).load(student_weights)
    loader = DistillTrainer.build_train_loader(cfg)
    rows = []
    # The loss's inputs are exactly the distilled rows: (student logits, teacher logits, labels).
    hook = model.distill_loss.register_forward_pre_hook(lambda _, inputs: rows.append(inputs[1:3]))
    model.train()
    with EventStorage(0):
        for _, batch in zip(range(args.det_batches), loader):
            model(batch)
    hook.remove()
    logits, labels = zip(*rows)
    return torch.cat(logits), torch.cat(labels), cfg.MODEL.ROI_HEADS.NUM_CLASSES


def command() -> str:
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return f"{threads}python benchmarks/teacher_topk_structure.py {' '.join(sys.argv[1:])}".rstrip()


def main(argv=None) -> None:
    p = documented_parser(__doc__, "docs/ablations.md")
    p.add_argument("--cls-teacher", default="output/cls_bench/teacher/last.pth")
    p.add_argument("--det-teacher-config", default="configs/embedded/teacher.yaml")
    p.add_argument("--det-teacher-weights", default="output/demo/teacher/model_final.pth")
    p.add_argument("--student-weights", nargs="+", default=["", "output/demo/topkd/seed0/model_final.pth"],
                   help='students whose proposals the teacher scores; "" is the student at initialisation')
    p.add_argument("--det-split", default="val", choices=["train", "val", "test"])
    p.add_argument("--det-batches", type=int, default=20)
    p.add_argument("--data-root", type=Path, default=Path("datasets/embedded_shapes"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--output", type=Path, default=Path("output/topk_structure.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    stats = topk_stats(*classification_logits(args.cls_teacher), CLS_KS)
    cls_text = ("## Fashion-MNIST teacher (fmnist_teacher), val split\n\n"
                + markdown_table(["rows of", *table_columns(CLS_KS)],
                                 [{"rows of": "val images", **table_row(stats, CLS_KS)}])
                + f"\nTeacher {args.cls_teacher}; 5k held-out val images, no augmentation; C = 10 (uniform entropy "
                f"ln 10 = {math.log(10):.3f}). {time.perf_counter() - start:.0f} s. Command: {command()}\n")

    start = time.perf_counter()
    det_rows = []
    for weights in args.student_weights:
        logits, labels, background = detection_rows(args, weights)
        student = weights or "student at init"
        det_rows.append({"proposals of": student, "rows of": "all ROIs",
                         **table_row(topk_stats(logits, labels, DET_KS), DET_KS)})
        fg = labels != background
        det_rows.append({"proposals of": student, "rows of": "foreground ROIs",
                         **table_row(topk_stats(logits[fg], labels[fg], DET_KS), DET_KS)})
    det_text = ("## Embedded detection teacher, ROI rows DistillRCNN distills\n\n"
                + markdown_table(["proposals of", "rows of", *table_columns(DET_KS)], det_rows)
                + f"\nTeacher {args.det_teacher_weights} ({args.det_teacher_config}) scoring the "
                f"configs/embedded/topkd.yaml student's sampled proposals, {args.det_batches} training batches of the "
                f"{args.det_split} split; C+1 = {background + 1}, background = label {background} (uniform entropy "
                f"ln {background + 1} = {math.log(background + 1):.3f}). "
                f"{time.perf_counter() - start:.0f} s. Command: {command()}\n")

    text = f"# Top-K structure of the cached teachers' logits\n\n{cls_text}\n{det_text}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
