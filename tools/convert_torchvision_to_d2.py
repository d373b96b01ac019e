#!/usr/bin/env python
"""
Convert torchvision ImageNet weights into a Detectron2 student initialisation (.pkl).

Usage:
  python tools/convert_torchvision_to_d2.py --arch mobilenetv2 mobilenet_v2-b0353104.pth mnv2.pkl
  python tools/convert_torchvision_to_d2.py --arch resnet resnet18-f37072fd.pth r18.pkl

The names are those of an FPN detector's ``backbone.bottom_up`` (see topkd_det.detection.convert).
Use the .pkl as MODEL.WEIGHTS together with torchvision's input convention:

  INPUT.FORMAT "RGB"
  MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]
  MODEL.PIXEL_STD [58.395, 57.120, 57.375]
  MODEL.RESNETS.STRIDE_IN_1X1 False   # ResNet-50/101: torchvision strides in the 3x3 conv
"""
import os
import pickle
import sys
from collections.abc import Mapping

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from topkd_det.cli import add_debug_flag, documented_parser, run  # noqa: E402
from topkd_det.detection.convert import ARCHS, convert_torchvision  # noqa: E402
from topkd_det.files import LOAD_ERRORS, unreadable_reason, write_bytes_atomic  # noqa: E402


def parse_args(argv=None):
    parser = documented_parser(__doc__, "docs/detection_coco.md")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("input", help="torchvision state dict (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    return add_debug_flag(parser).parse_args(argv)


def read_state_dict(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        raise ValueError(f"input file {path!r} {unreadable_reason(path, err)}: download it again "
                         "(torchvision's weight files are listed in its model documentation)") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"input file {path!r} holds a {type(state).__name__}, not a torchvision state dict "
                         "(name -> tensor)")
    return state


def main(argv=None, args=None):
    args = args or parse_args(argv)
    state_dict = read_state_dict(args.input)
    try:
        checkpoint = convert_torchvision(state_dict, args.arch)
    except ValueError as e:
        raise ValueError(f"input file {args.input!r}: {e}") from None
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder {folder!r} does not exist; create it first")
    write_bytes_atomic(args.output, pickle.dumps(checkpoint))
    print(f"Wrote {len(checkpoint['model'])} tensors to {args.output}")


def cli(argv=None):
    """``main`` with errors as one line and a non-zero exit (``--debug``: the traceback)."""
    args = parse_args(argv)
    return run(lambda: main(argv, args), debug=args.debug)


if __name__ == "__main__":
    cli()
