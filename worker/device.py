"""Which torch device a worker uses (`FLEXBIN_DEVICE`: auto = CUDA when present): the rule lives in
`core.device`, shared with every command line's `--device`."""
from __future__ import annotations

from core.device import DeviceUnavailable


def resolve_device(setting: str) -> str:
    from core.device import resolve_device as resolve

    return resolve(setting, what="FLEXBIN_DEVICE")


__all__ = ["DeviceUnavailable", "resolve_device"]
