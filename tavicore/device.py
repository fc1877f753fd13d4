"""The one choice of compute device, for inference, training and the benches."""

from __future__ import annotations

import torch

from tavicore.errors import DeviceError

#: What a device setting may say.
VALID_DEVICES = "auto, cpu, cuda, cuda:N"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else the CPU; otherwise the named device.

    Raises:
        DeviceError: an unknown device string, a device type other than CPU or CUDA, or CUDA
            asked for on a machine without it.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}; valid: {VALID_DEVICES}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {device!r}; valid: {VALID_DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: CUDA is not available here; use cpu or auto")
    return dev


__all__ = ["VALID_DEVICES", "resolve_device"]
