"""Which torch device to run on: one rule for the worker (`FLEXBIN_DEVICE`) and every command line
(`--device`).

`auto` is CUDA when a CUDA device is present, else the CPU; `cpu`, `cuda` and `cuda:N` are taken
as given, and asking for CUDA on a machine without it is an error rather than a silent CPU run.
"""
from __future__ import annotations

import argparse

DEVICE_HELP = 'torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1"... (default: auto)'


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(setting: str, *, what: str = "device") -> str:
    """The torch device string for `setting` ("auto", "cpu", "cuda", "cuda:N", "mps"...).

    `what` names the setting in the error (e.g. "FLEXBIN_DEVICE"). Raises DeviceUnavailable for
    CUDA without a CUDA device (or an index past the last one), ValueError for a string torch
    does not parse as a device.
    """
    import torch

    setting = setting.strip()
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{what}={setting!r} is not a torch device ({DEVICE_HELP})") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"{what}={setting} but CUDA is not available on this machine "
                                    "(use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"{what}={setting} but this machine has {torch.cuda.device_count()} "
                                    "CUDA device(s)")
    return setting


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device` (default auto), resolved with `resolve_device` by `device_from_args`."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def device_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> str:
    """`args.device` resolved; an unavailable or malformed device ends the command with its
    message (argparse's usage error when `parser` is given)."""
    try:
        return resolve_device(str(args.device), what="--device")
    except (DeviceUnavailable, ValueError) as e:
        if parser is not None:
            parser.error(str(e))
        raise SystemExit(f"error: {e}") from e
