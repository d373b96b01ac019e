"""Which device a detection run uses: ``auto`` (the embedded configs' ``MODEL.DEVICE`` and
``train.device``) is the GPU when PyTorch sees one, else the CPU; an explicit ``cuda`` without a
visible GPU is a config error, not a crash when the model is moved."""
import torch

from ..config_io import ConfigError

AUTO = "auto"


def resolve_device(device: str, key: str) -> str:
    """The concrete device of ``device`` (the value of ``key``)."""
    if not isinstance(device, str) or not device:
        raise ConfigError(f"{key} must be a device name (auto, cpu, cuda, cuda:1, ...), got {device!r}")
    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {device!r}, but PyTorch sees no CUDA GPU (torch.cuda.is_available() is False); "
                          f"set {key} to cpu, or to auto to use a GPU only where there is one")
    return device


def device_line(device: str, key: str) -> str:
    """The log line that says plainly where the run computes and how to change it."""
    gpu = torch.cuda.is_available()
    line = f"device: {device} ({key}; PyTorch sees {'a CUDA GPU' if gpu else 'no CUDA GPU'})"
    if device == "cpu" and gpu:
        line += f": training on the CPU although a GPU is there; set {key} auto or cuda to use it"
    return line
