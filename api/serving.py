"""The serving runtime behind `POST /detect`: backends, a model cache bounded by bytes and a micro-batcher.

- **Backends** (`FLEXBIN_SERVING_BACKEND`), one class each behind the same `load` / `predict`:
  `OpenVinoBackend` (default) runs the checkpoint's OpenVINO IR, exported by the worker at its
  step (`core.export`; binary-activation layers as 1-bit convolutions), with the torch-free
  numpy pre/post-processing of `core.export.runtime`, compiled once per input shape (at most
  `FLEXBIN_SERVING_COMPILED_SHAPES` per checkpoint). A checkpoint without an IR (made before
  exports existed, or its export failed) falls back to `TorchBackend`, which unpacks the
  packed checkpoint (`core.checkpoint.unpack_checkpoint`: the binary layers' weights rebuilt
  from their sign bits and scales) and runs PyTorch. torch is imported only by the torch
  backend, so an OpenVINO-only API process never loads it.
- **Model cache** (LRU): checkpoint id -> loaded model. The budget is the bytes of its weights
  (`FLEXBIN_SERVING_CACHE_MAX_BYTES`); the least recently used model goes first,
  but a model in use by a batch stays alive until that batch ends (the batch holds it).
  Concurrent requests for a model being loaded wait on the same load.
- **Micro-batcher**, one per checkpoint: each request's images are queued; a batch leaves
  when it holds `FLEXBIN_SERVING_MAX_BATCH_SIZE` images or when its first image has waited
  `FLEXBIN_SERVING_MAX_WAIT_MS` (Triton's dynamic batcher, `max_queue_delay`). One forward
  pass per batch runs on the single inference thread, so the event loop never blocks and
  batches of different checkpoints never fight over the CPU cores. Max batch size 1 turns
  batching off (one forward per image).
- **Warm-up and readiness**: deployed checkpoints (every tenant's) are loaded and run once
  on a dummy image at start, every `FLEXBIN_SERVING_REFRESH_SECONDS` when a deployment
  changed (also when another process changed it), and at once after `PUT /deployment`.
  `/readyz` is ready only when every deployed checkpoint has been warmed in this process.
- A deployment switch never drops a request: requests already queued finish on the model
  they were queued for; new ones resolve the deployment again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from api.prometheus import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

BATCHER_IDLE_SECONDS = 60.0  # an idle checkpoint's batcher task ends; the next request restarts it
WARMUP_SIZE = (3, 240, 320)  # dummy image [3, H, W] of the warm-up forward


@dataclass
class Prediction:
    """One image's detections, best first: boxes x1, y1, x2, y2 in that image's pixels."""

    boxes: list[list[float]]
    scores: list[float]


Image = np.ndarray
"""An RGB image, float32 numpy [3, H, W] in [0, 1] (`api.services.decode_detect_image`)."""

Fetch = Callable[[str, str], "bytes | None"]
"""`fetch(checkpoint_id, kind)`: the stored bytes of a checkpoint, `kind` "checkpoint" (packed
safetensors), "openvino" (its IR zip) or "openvino-int8" (its int8 IR zip); None when it has
no such file. Blocking."""

KEY_SEPARATOR = "@"


def serving_key(checkpoint_id: str, format: str | None = None) -> str:
    """What the runtime caches and batches by: a checkpoint as trained (its id), or one of its
    other files (`<id>@openvino-int8`)."""
    return checkpoint_id if format in (None, "openvino") else f"{checkpoint_id}{KEY_SEPARATOR}{format}"


def split_key(key: str) -> tuple[str, str | None]:
    """(checkpoint id, format or None) of a serving key."""
    checkpoint_id, _, format = key.partition(KEY_SEPARATOR)
    return checkpoint_id, format or None


class Runner(Protocol):
    """One loaded checkpoint, ready to predict."""

    backend: str
    architecture: str
    nbytes: int  # what it holds in memory, for the cache budget

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        """Detections for a batch of images of any sizes (runs on the inference thread)."""
        ...


class Backend(Protocol):
    name: str

    def load(self, checkpoint_id: str, fetch: Fetch) -> Runner:
        """Load a checkpoint (blocking; runs in a worker thread); ValueError / LookupError /
        RuntimeError when it cannot be served."""
        ...


class TorchRunner:
    backend = "torch"

    def __init__(self, model: nn.Module, architecture: str, threads: int) -> None:
        self.model, self.architecture, self.threads = model, architecture, threads
        self.nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        """One forward pass over the batch (torchvision detection API)."""
        import torch

        torch.set_num_threads(self.threads)  # per thread for some torch backends: set where it runs
        with torch.inference_mode():
            raw = self.model([torch.from_numpy(np.ascontiguousarray(im)) for im in images])
        out = []
        for pred in raw:
            order = pred["scores"].argsort(descending=True)
            out.append(Prediction(boxes=pred["boxes"][order].tolist(), scores=pred["scores"][order].tolist()))
        return out


class TorchBackend:
    """PyTorch on the unpacked packed checkpoint (binary layers rebuilt as float weights)."""

    name = "torch"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def load(self, key: str, fetch: Fetch) -> Runner:
        # torch loads only when a checkpoint is served by the torch backend
        from core.checkpoint import unpack_checkpoint

        checkpoint_id, format = split_key(key)
        if format is not None:
            raise LookupError(f"checkpoint {checkpoint_id}: the torch backend serves checkpoints as trained, "
                              f"not their {format} file (FLEXBIN_SERVING_BACKEND=openvino does)")
        data = fetch(checkpoint_id, "checkpoint")
        if data is None:
            raise LookupError(f"checkpoint {checkpoint_id} has no stored file")
        model, card = unpack_checkpoint(data)
        return TorchRunner(model.eval(), card.architecture, self.threads)


class OpenVinoRunner:
    backend = "openvino"

    def __init__(self, detector: Any, weights_bytes: int) -> None:
        self.detector = detector
        self.architecture = str(detector.card.get("architecture", "?"))
        self.nbytes = weights_bytes

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        return [Prediction(boxes=d.boxes.tolist(), scores=d.scores.tolist()) for d in self.detector.detect(images)]


class OpenVinoBackend:
    """The checkpoint's OpenVINO IR zip on the CPU plugin (`core.export.runtime.Detector`: numpy
    pre/post-processing, compiled per input shape); checkpoints without one go to `fallback`."""

    name = "openvino"

    def __init__(self, threads: int, compiled_shapes: int, fallback: Backend, precision: str = "f32") -> None:
        self.threads, self.compiled_shapes, self.fallback = threads, compiled_shapes, fallback
        self.precision = precision

    def load(self, key: str, fetch: Fetch) -> Runner:
        # OpenVINO loads only when a checkpoint is served by the OpenVINO backend
        from core.export.runtime import Detector

        checkpoint_id, format = split_key(key)
        data = fetch(checkpoint_id, format or "openvino")
        if data is None and format is not None:
            raise LookupError(f"checkpoint {checkpoint_id} has no {format} file (download or deploy it in that "
                              "format to make it)")
        if data is None:
            log.warning("serving: checkpoint %s has no OpenVINO export; serving it with %s", checkpoint_id,
                        self.fallback.name)
            return self.fallback.load(checkpoint_id, fetch)
        detector = Detector.from_zip(data, threads=self.threads, max_compiled=self.compiled_shapes,
                                     precision=self.precision)
        return OpenVinoRunner(detector, len(data))


def make_backend(settings: Settings, threads: int) -> Backend:
    torch_backend = TorchBackend(threads)
    if settings.serving_backend == "torch":
        return torch_backend
    return OpenVinoBackend(threads, settings.serving_compiled_shapes, torch_backend, settings.serving_precision)


@dataclass
class LoadedModel:
    checkpoint_id: str
    architecture: str
    runner: Runner
    nbytes: int
    load_seconds: float


@dataclass
class _Item:
    image: Image
    future: asyncio.Future[Prediction]
    enqueued: float


@dataclass
class _Batcher:
    checkpoint_id: str
    pending: deque[_Item] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def torch_threads(settings: Settings) -> int:
    """Intra-op threads for inference (torch or OpenVINO). Default: half the usable CPUs. On a
    busy 2-core machine one thread ran PedNet at 16 ms per image and two threads at 50-100 ms
    (threads waiting on each other at every op), so oversubscribing costs far more than it gains."""
    return settings.serving_torch_threads or max(1, len(os.sched_getaffinity(0)) // 2)


def _predict(runner: Runner, images: Sequence[Image]) -> list[Prediction]:
    return runner.predict(images)


def _warm_up(runner: Runner) -> None:
    runner.predict([np.random.default_rng(0).random(WARMUP_SIZE, dtype=np.float32)])


class ServingError(RuntimeError):
    """A checkpoint that cannot be served (its blob is missing or does not unpack)."""


class InferenceError(RuntimeError):
    """The model's forward pass failed on an image (the route answers 422, never 500)."""


class ServingRuntime:
    """Model cache + per-checkpoint micro-batchers; create it in the app, `start()` in the
    lifespan (inside the event loop), `stop()` at shutdown.

    `fetch(checkpoint_id, kind)` reads a checkpoint's bytes from the store (`Fetch`), and
    `deployed() -> list[str]` lists the deployed checkpoint ids; both are blocking and run
    in worker threads. `backend` defaults to the configured one (`make_backend`).
    """

    def __init__(self, settings: Settings, metrics: Metrics, *, fetch: Fetch,
                 deployed: Callable[[], list[str]], backend: Backend | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._fetch = fetch
        self._deployed = deployed
        self.max_batch_size = settings.serving_max_batch_size
        self.max_wait = settings.serving_max_wait_ms / 1000.0
        self.threads = torch_threads(settings)
        self.backend = backend or make_backend(settings, self.threads)
        self._executor: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._cache_bytes = 0
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._batchers: dict[str, _Batcher] = {}
        self._warmed: set[str] = set()
        self._failed: dict[str, str] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        # Deliberate thread counts (see torch_threads); one inference thread, so concurrent
        # batches queue instead of oversubscribing the cores.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._refresher = asyncio.create_task(self._refresh_loop(), name="serving-refresh")
        log.info("serving: %s backend, %d inference threads, max batch %d, max wait %.0f ms, model cache %d MiB",
                 self.backend.name, self.threads, self.max_batch_size, self.max_wait * 1000,
                 self.settings.serving_cache_max_bytes >> 20)

    async def stop(self) -> None:
        tasks = [t for t in (self._refresher, *self._background, *(b.task for b in self._batchers.values())) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- model cache --------------------------------------------------------------------
    async def model(self, checkpoint_id: str, *, count: bool = True) -> LoadedModel:
        """The loaded (and warmed) model of a checkpoint, loading it on a miss. `count`: record
        the hit or miss (once per request; a batch looking its model up again does not)."""
        loaded = self._cache.get(checkpoint_id)
        if loaded is not None:
            self._cache.move_to_end(checkpoint_id)
            if count:
                self.metrics.cache_hits.inc()
            return loaded
        future = self._loading.get(checkpoint_id)
        if future is None:
            self.metrics.cache_misses.inc()
            future = asyncio.ensure_future(self._load(checkpoint_id))
            self._loading[checkpoint_id] = future
            future.add_done_callback(lambda _f: self._loading.pop(checkpoint_id, None))
        return await asyncio.shield(future)

    async def _load(self, checkpoint_id: str) -> LoadedModel:
        started = time.perf_counter()
        try:
            runner = await asyncio.to_thread(self.backend.load, checkpoint_id, self._fetch)
            await asyncio.get_running_loop().run_in_executor(self._executor, _warm_up, runner)
        except (ValueError, LookupError, RuntimeError) as exc:  # CheckpointError is a ValueError
            self._failed[checkpoint_id] = f"{type(exc).__name__}: {exc}"[:300]
            log.error("serving: checkpoint %s cannot be served: %s", checkpoint_id, exc)
            raise ServingError(f"checkpoint {checkpoint_id} cannot be served: {exc}") from None
        loaded = LoadedModel(checkpoint_id, runner.architecture, runner, runner.nbytes,
                             time.perf_counter() - started)
        self._cache[checkpoint_id] = loaded
        self._cache_bytes += loaded.nbytes
        self._warmed.add(checkpoint_id)
        self._failed.pop(checkpoint_id, None)
        self._evict(keep=checkpoint_id)
        log.info("serving: loaded and warmed checkpoint %s (%s on %s, %.1f MiB) in %.2fs", checkpoint_id,
                 loaded.architecture, runner.backend, loaded.nbytes / 2**20, loaded.load_seconds)
        return loaded

    def _evict(self, keep: str) -> None:
        while self._cache_bytes > self.settings.serving_cache_max_bytes and len(self._cache) > 1:
            oldest = next(iter(self._cache))
            if oldest == keep:
                self._cache.move_to_end(oldest)
                continue
            gone = self._cache.pop(oldest)
            self._cache_bytes -= gone.nbytes
            log.info("serving: evicted checkpoint %s (%.1f MiB)", oldest, gone.nbytes / 2**20)
        self.metrics.cache_bytes.set(self._cache_bytes)
        self.metrics.cache_models.set(len(self._cache))

    def preload(self, checkpoint_id: str) -> None:
        """Start loading + warming a checkpoint in the background (a new deployment)."""
        if checkpoint_id in self._cache or checkpoint_id in self._loading:
            return
        task = asyncio.ensure_future(self.model(checkpoint_id))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # logged in _load; do not warn "exception never retrieved"

    async def _refresh_loop(self) -> None:
        while True:
            try:
                for checkpoint_id in await asyncio.to_thread(self._deployed):
                    # a checkpoint that failed to load is retried when /readyz or /detect asks
                    if checkpoint_id not in self._warmed and checkpoint_id not in self._failed:
                        self.preload(checkpoint_id)
            except Exception as exc:  # noqa: BLE001 - the database may be down; try again later
                log.warning("serving: cannot list deployments: %s", exc)
            await asyncio.sleep(self.settings.serving_refresh_seconds)

    async def readiness(self) -> tuple[bool, str]:
        """(ready, detail): every deployed checkpoint loaded and warmed in this process."""
        deployed = await asyncio.to_thread(self._deployed)
        missing = [c for c in deployed if c not in self._warmed]
        for checkpoint_id in missing:
            self.preload(checkpoint_id)
        if not missing:
            return True, "ok"
        # /readyz takes no key: counts only, no tenant's ids (the log names them)
        failed = sum(c in self._failed for c in missing)
        if failed:
            return False, f"{failed} deployed checkpoint(s) failed to load (see the API log)"
        return False, f"loading {len(missing)} deployed checkpoint(s)"

    # -- micro-batching -----------------------------------------------------------------
    async def detect(self, checkpoint_id: str, images: Sequence[Image]) -> list[Prediction]:
        """Predictions for `images` (float32 numpy [3, H, W] RGB in [0, 1]) from one checkpoint."""
        await self.model(checkpoint_id)  # a checkpoint that cannot load fails here, before queueing
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(checkpoint_id)
        if batcher is None:
            batcher = self._batchers[checkpoint_id] = _Batcher(checkpoint_id)
        now = loop.time()
        items = [_Item(image, loop.create_future(), now) for image in images]
        batcher.pending.extend(items)
        batcher.wakeup.set()
        if batcher.task is None:
            batcher.task = asyncio.create_task(self._batch_loop(batcher), name=f"batcher-{checkpoint_id}")
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _batch_loop(self, batcher: _Batcher) -> None:
        loop = asyncio.get_running_loop()
        pending = batcher.pending
        while True:
            if not pending:
                batcher.wakeup.clear()
                try:
                    await asyncio.wait_for(batcher.wakeup.wait(), BATCHER_IDLE_SECONDS)
                except TimeoutError:
                    if not pending:  # nothing arrived: end (no await between check and exit)
                        batcher.task = None
                        self._batchers.pop(batcher.checkpoint_id, None)
                        return
                continue
            deadline = pending[0].enqueued + self.max_wait
            while len(pending) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                batcher.wakeup.clear()
                try:
                    await asyncio.wait_for(batcher.wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = [pending.popleft() for _ in range(min(self.max_batch_size, len(pending)))]
            batch = [item for item in batch if not item.future.done()]  # requests that went away
            if batch:
                await self._run_batch(batcher.checkpoint_id, batch)

    async def _run_batch(self, checkpoint_id: str, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            loaded = await self.model(checkpoint_id, count=False)  # held until the batch ends, even if evicted
            started = time.perf_counter()
            preds = await loop.run_in_executor(self._executor, _predict, loaded.runner,
                                               [item.image for item in batch])
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(batch))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request(s)
            if len(batch) > 1:  # one bad image must not fail the other requests of its batch
                for item in batch:
                    await self._run_batch(checkpoint_id, [item])
                return
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceError(f"{type(exc).__name__}: {exc}"[:300]))
            return
        for item, pred in zip(batch, preds, strict=True):
            if not item.future.done():
                item.future.set_result(pred)
