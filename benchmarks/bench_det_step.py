#!/usr/bin/env python
"""Training-step cost of distillation in detection, measured side by side in one run, per model family.

    python benchmarks/bench_det_step.py                       # embedded configs (CPU-sized), every family
    python benchmarks/bench_det_step.py --families vitdet     # the embedded ViTDet pair (official Detectron2)
    python benchmarks/bench_det_step.py --pair R101_R18 --device cuda --size 800 --width 1067 --batch 2 \
        --families faster --teacher-dtypes float32 bfloat16 --student-amp off on

For each family (Faster, Mask and Cascade R-CNN; teacher and student of the same family; "vitdet": the
embedded ViTDet pair of configs/embedded/vitdet_*.py, a 3-block ViT student and a 6-block ViT teacher,
whatever --pair says), teacher
dtype (MODEL.TEACHER.DTYPE) and student precision (Detectron2's AMPTrainer, as SOLVER.AMP.ENABLED
trains, or its SimpleTrainer), rows interleaved round by round so that machine noise hits all alike:
  student         the student alone: one trainer step (forward, backward, metrics, SGD step)
  teacher fwd     the frozen teacher alone: backbone once + its box head(s) on the ROIs of every
                  student stage (what DistillRCNN asks of it)
  KD / TopKD      the DistillRCNN trainer step with that loss
The ratio distill / (student + teacher fwd) shows the overhead of running them together (the goal
is <= 1.05). On CUDA the peak memory above the weights is reported too; the teacher runs under
no_grad, so it should add no activation memory for backward.
"""
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import AMPTrainer, SimpleTrainer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.detection import add_topkd_config  # noqa: E402
from topkd_det.detection.vitdet import vit_backbone_available  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAIRS = {
    "embedded": (REPO / "configs/embedded/topkd.yaml", REPO / "configs/embedded/teacher.yaml"),
    "R101_R18": (REPO / "configs/COCO-Detection/topkd_R101_R18.yaml", None),
    "R101_R50": (REPO / "configs/COCO-Detection/topkd_R101_R50.yaml", None),
    "R50_MV2": (REPO / "configs/COCO-Detection/topkd_R50_MV2.yaml", None),
}
# The keys that turn a pair's Faster R-CNNs (student and teacher) into another family; the mask head
# is Detectron2's standard 4 convs, at 128 channels.
FAMILIES = {
    "faster": ("Faster R-CNN", []),
    "mask": ("Mask R-CNN", ["MODEL.MASK_ON", True, "MODEL.ROI_MASK_HEAD.NUM_CONV", 4,
                            "MODEL.ROI_MASK_HEAD.CONV_DIM", 128]),
    "cascade": ("Cascade R-CNN", ["MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
                                  "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True]),
    "vitdet": ("ViTDet (ViT) Faster R-CNN", None),
}
VITDET_CONFIGS = {name: REPO / f"configs/embedded/vitdet_{name}.py" for name in ("student", "teacher", "topkd")}


def student_cfg(pair, device, family, teacher_file=None, teacher_weights=None, method="none"):
    config, teacher_config = PAIRS[pair]
    cfg = get_cfg()
    add_topkd_config(cfg)
    cfg.merge_from_file(str(config))
    cfg.merge_from_list(FAMILIES[family][1])
    cfg.MODEL.TEACHER.OPTS = FAMILIES[family][1]
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    if teacher_config is not None:
        cfg.MODEL.TEACHER.CONFIG_FILE = str(teacher_config)
    if teacher_file:
        cfg.MODEL.TEACHER.CONFIG_FILE, cfg.MODEL.TEACHER.WEIGHTS = teacher_file, teacher_weights
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN" if method == "none" else "DistillRCNN"
    cfg.MODEL.DISTILL.METHOD = method
    return cfg


def random_teacher(cfg, out_dir: Path):
    """The teacher of ``cfg`` with random weights, written where MODEL.TEACHER.WEIGHTS can read it:
    timing does not depend on trained values, and nothing is downloaded."""
    from topkd_det.detection.teacher import teacher_cfg_from

    tcfg = teacher_cfg_from(cfg).clone()
    tcfg.defrost()
    tcfg.MODEL.WEIGHTS = ""
    model = build_model(tcfg)
    config_file, weights = out_dir / "teacher.yaml", out_dir / "teacher.pth"
    config_file.write_text(tcfg.dump())
    torch.save({"model": model.state_dict()}, weights)
    return str(config_file), str(weights)


def random_vitdet_teacher(out_dir: Path) -> str:
    """The embedded ViTDet teacher with random weights (timing does not depend on trained values)."""
    from detectron2.config import instantiate

    from topkd_det.detection.lazy_engine import load_lazy_config, student_only

    weights = out_dir / "vitdet_teacher.pth"
    model = instantiate(student_only(load_lazy_config(str(VITDET_CONFIGS["teacher"])).model))
    torch.save({"model": model.state_dict()}, weights)
    return str(weights)


def vitdet_models(args, teacher_weights, teacher_dtype):
    """The embedded ViTDet student alone, and with KD and TopKD from its teacher, padded to the
    benchmark's image size (the configs pad to 128 px squares)."""
    from detectron2.config import instantiate

    from topkd_det.detection.lazy_engine import load_lazy_config

    pad = [f"model.backbone.square_pad={max(args.size, args.width)}"]
    student = load_lazy_config(str(VITDET_CONFIGS["student"]), pad + [f"train.device={args.device}"])
    models = {"student": instantiate(student.model)}
    for name, method in (("KD", "kd"), ("TopKD", "topkd")):
        cfg = load_lazy_config(str(VITDET_CONFIGS["topkd"]), pad + [
            f"model.teacher.config.backbone.square_pad={max(args.size, args.width)}",
            f"model.teacher.weights={teacher_weights}", f"model.teacher.dtype={teacher_dtype}",
            f"model.distill_loss.options.method={method}"])
        models[name] = instantiate(cfg.model)
    return {name: model.to(args.device) for name, model in models.items()}


def batch(n, height, width, num_classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    scale = torch.tensor([width, height], dtype=torch.float32)
    for _ in range(n):
        inst = Instances((height, width))
        xy = torch.rand(4, 2, generator=g) * scale * 0.6
        wh = (0.1 + 0.3 * torch.rand(4, 2, generator=g)) * scale
        boxes = torch.cat([xy, xy + wh], 1)
        inst.gt_boxes = Boxes(torch.min(boxes, torch.cat([scale, scale]) - 1))
        inst.gt_classes = torch.randint(0, num_classes, (4,), generator=g)
        masks = torch.zeros(4, height, width, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        out.append({"image": (torch.rand(3, height, width, generator=g) * 255).to(device), "instances": inst,
                    "height": height, "width": width})
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def trainer_for(model, inputs, amp):
    """Detectron2's own training step on the same batch again and again: AMPTrainer is what
    SOLVER.AMP.ENABLED trains with, SimpleTrainer the full-precision default."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    trainer_class = AMPTrainer if amp else SimpleTrainer
    return trainer_class(model, itertools.repeat(inputs), optimizer)


def measure(args, family, teacher_files, teacher_dtype, amp):
    """Median times (s), CUDA peaks (MiB) of the four rows, and the ROIs per image the teacher scores."""
    if family == "vitdet":
        models = vitdet_models(args, teacher_files, teacher_dtype)
    else:
        models = {"student": build_model(student_cfg(args.pair, args.device, family))}
        for method in ("kd", "topkd"):
            cfg = student_cfg(args.pair, args.device, family, *teacher_files, method=method)
            cfg.MODEL.TEACHER.DTYPE = teacher_dtype
            models["KD" if method == "kd" else "TopKD"] = build_model(cfg)
    num_classes = models["student"].roi_heads.num_classes
    inputs = batch(args.batch, args.size, args.width or args.size, num_classes, args.device)
    trainers = {k: trainer_for(m, inputs, amp) for k, m in models.items()}
    teacher = models["TopKD"].teacher

    # The boxes of every student stage the teacher scores in one distillation step.
    calls = []
    original = teacher.box_logits

    def capture(features, boxes, stage):
        calls.append((boxes, stage))
        return original(features, boxes, stage)

    teacher.box_logits = capture
    with EventStorage(0):
        trainers["TopKD"].run_step()
    teacher.box_logits = original
    rois_per_image = sum(len(b) for boxes, _ in calls for b in boxes) / (len(calls) * len(inputs))

    def teacher_forward():
        features = teacher.features(inputs)
        for boxes, stage in calls:
            teacher.box_logits(features, boxes, stage)

    runs = {"student": trainers["student"].run_step, "teacher fwd": teacher_forward,
            "KD": trainers["KD"].run_step, "TopKD": trainers["TopKD"].run_step}
    times = {k: [] for k in runs}
    peaks = {}
    with EventStorage(0):
        for r in range(args.warmup + args.repeats):
            for name, fn in runs.items():
                if args.device.startswith("cuda") and r == args.warmup:
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                sync(args.device)
                start = time.perf_counter()
                fn()
                sync(args.device)
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - start)
                if args.device.startswith("cuda") and r == args.warmup:
                    peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return {k: statistics.median(v) for k, v in times.items()}, peaks, rois_per_image


def main():
    p = documented_parser(__doc__, "docs/performance.md", "docs/gpu_measurements.md")
    p.add_argument("--pair", default="embedded", choices=list(PAIRS))
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                   help="default: all (vitdet only where Detectron2 has the ViT backbone: the official build)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=128, help="image height (the short side)")
    p.add_argument("--width", type=int, default=0, help="image width; 0: square")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--teacher-dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--student-amp", nargs="+", default=["off"], choices=["off", "on"],
                   help="on: Detectron2's AMPTrainer (float16 autocast + grad scaler; needs CUDA)")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args()
    if "on" in args.student_amp and not args.device.startswith("cuda"):
        p.error("--student-amp on needs --device cuda (Detectron2's AMPTrainer requires CUDA)")
    if not vit_backbone_available():
        if "--families" in sys.argv and "vitdet" in args.families:
            p.error("--families vitdet needs the official Detectron2 (main), whose detectron2.modeling has the ViT "
                    "backbone (docs/vitdet.md)")
        args.families = [f for f in args.families if f != "vitdet"]
    torch.manual_seed(0)

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"{args.pair}: batch {args.batch} x {args.size}x{args.width or args.size} px on {where}, torch "
             f"{torch.__version__}; median of {args.repeats} steps after {args.warmup} warm-up rounds", "",
             "| family | teacher dtype | student AMP | step | ms | ratio to student + teacher fwd | peak MiB | ROIs/img |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for family in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            teacher_files = (random_vitdet_teacher(Path(tmp)) if family == "vitdet" else
                             random_teacher(student_cfg(args.pair, args.device, family, method="kd"), Path(tmp)))
            for teacher_dtype, amp in itertools.product(args.teacher_dtypes, args.student_amp):
                med, peaks, rois = measure(args, family, teacher_files, teacher_dtype, amp == "on")
                joint = med["student"] + med["teacher fwd"]
                for name, t in med.items():
                    ratio = f"{t / joint:.2f}" if name in ("KD", "TopKD") else ""
                    peak = f"{peaks[name]:.0f}" if name in peaks else "n/a"
                    line = (f"| {FAMILIES[family][0]} | {teacher_dtype} | {amp} | {name} | {t * 1e3:.1f} | {ratio} "
                            f"| {peak} | {rois:.0f} |")
                    lines.append(line)
                    print(line, flush=True)
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
