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
import argparse
import os
import pickle

import torch

from topkd_det.detection.convert import ARCHS, convert_torchvision


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("input", help="torchvision state dict (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.input):
        parser.error(f"input file not found: {args.input}")
    state_dict = torch.load(args.input, map_location="cpu", weights_only=True)
    try:
        checkpoint = convert_torchvision(state_dict, args.arch)
    except ValueError as e:
        parser.error(f"{args.input}: {e}")
    with open(args.output, "wb") as f:
        pickle.dump(checkpoint, f)
    print(f"Wrote {len(checkpoint['model'])} tensors to {args.output}")


if __name__ == "__main__":
    main()
