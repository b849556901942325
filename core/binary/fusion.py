"""Fused kernels for the input binarizers' elementwise maths while fine-tuning.

The straight-through estimators of `core.binary.activation` are a dozen elementwise passes
over each binary conv's input (`scale_threshold`'s backward: three masks, two gradients, a
per-channel and a whole-tensor sum). In eager PyTorch each pass is its own loop over memory;
in a late step of the `inverse_depth` recipe (38 binary-input convs of pedestrian_adas_0002)
they were about 15-20 % of a fine-tuning iteration on 2 CPU cores. TorchInductor
(`torch.compile`) fuses each function into one loop (bench/fused_binarizers.py measures what
that buys).

Fusion is on only inside `fusing()` (the fine-tuning loop's forward, `TrainOptions.fuse_binarizers`);
evaluation and export run the same functions eagerly. A straight-through estimator reads
`fusion_enabled()` in its forward and keeps the answer for its backward, which autograd may
run on another thread. Where Inductor cannot compile (no C++ compiler, an unsupported
device), the kernel logs a warning once and runs eagerly from then on: the same maths, so
results agree with the eager run within float rounding (the order of the sums differs).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import Generic, ParamSpec, TypeVar

import torch

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_FUSING = contextvars.ContextVar("flexbin_fusing_binarizers", default=False)


@contextlib.contextmanager
def fusing(enabled: bool = True) -> Iterator[None]:
    """Run the `FusedKernel`s called within (in this thread or task) compiled when `enabled`."""
    token = _FUSING.set(enabled)
    try:
        yield
    finally:
        _FUSING.reset(token)


def fusion_enabled() -> bool:
    """Whether the caller is inside `fusing(True)`."""
    return _FUSING.get()


class FusedKernel(Generic[P, R]):
    """`fn` (elementwise tensor maths; `@FusedKernel` on its definition), compiled by `torch.compile` on the first fused call
    (dynamic shapes: one compilation serves the layers' sizes)."""

    def __init__(self, fn: Callable[P, R]) -> None:
        self.fn = fn
        self._compiled: Callable[P, R] | None = None
        self.failed = False

    def fused(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """`fn(*args)` through the compiled kernel (eagerly once compiling has failed)."""
        if self.failed:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as e:
            self.failed = True
            log.warning("torch.compile could not fuse %s (%s); it runs unfused from now on",
                        self.fn.__qualname__, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return self.fn(*args, **kwargs)

    def run(self, fuse: bool, *args: P.args, **kwargs: P.kwargs) -> R:
        """`fused(*args)` when `fuse`, else `fn(*args)`."""
        return self.fused(*args, **kwargs) if fuse else self.fn(*args, **kwargs)
