"""The serving runtime behind `POST /detect`: a model cache bounded by bytes and a micro-batcher.

- **Model cache** (LRU): checkpoint id -> inference model, unpacked from the *packed*
  checkpoint in the store (`core.checkpoint.unpack_checkpoint`: the binary layers' weights
  are rebuilt from their sign bits and scales). The budget is the bytes of the unpacked
  tensors (`FLEXBIN_SERVING_CACHE_MAX_BYTES`); the least recently used model goes first,
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
from typing import TYPE_CHECKING, Any

from api.metrics import Metrics
from core.settings import Settings

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)

BATCHER_IDLE_SECONDS = 60.0  # an idle checkpoint's batcher task ends; the next request restarts it
WARMUP_SIZE = (3, 240, 320)  # dummy image [3, H, W] of the warm-up forward


@dataclass
class Prediction:
    """One image's detections, best first: boxes x1, y1, x2, y2 in that image's pixels."""

    boxes: list[list[float]]
    scores: list[float]


@dataclass
class LoadedModel:
    checkpoint_id: str
    architecture: str
    model: nn.Module
    nbytes: int
    load_seconds: float


@dataclass
class _Item:
    image: Tensor
    future: asyncio.Future[Prediction]
    enqueued: float


@dataclass
class _Batcher:
    checkpoint_id: str
    pending: deque[_Item] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def torch_threads(settings: Settings) -> int:
    """Intra-op threads for inference. Default: half the usable CPUs. On a busy 2-core machine
    one thread ran PedNet at 16 ms per image and two threads at 50-100 ms (threads waiting on
    each other at every op), so oversubscribing costs far more than it gains."""
    return settings.serving_torch_threads or max(1, len(os.sched_getaffinity(0)) // 2)


def _unpack(data: bytes) -> tuple[nn.Module, str, int]:
    from core.checkpoint import unpack_checkpoint

    model, card = unpack_checkpoint(data)
    model.eval()
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return model, card.architecture, nbytes


def _forward(model: nn.Module, images: Sequence[Tensor]) -> list[Prediction]:
    """One forward pass over a list of images of any sizes (torchvision detection API)."""
    import torch

    with torch.inference_mode():
        raw = model(list(images))
    out = []
    for pred in raw:
        order = pred["scores"].argsort(descending=True)
        out.append(Prediction(boxes=pred["boxes"][order].tolist(), scores=pred["scores"][order].tolist()))
    return out


def _warm_up(model: nn.Module) -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    _forward(model, [torch.rand(WARMUP_SIZE, generator=generator)])


class ServingError(RuntimeError):
    """A checkpoint that cannot be served (its blob is missing or does not unpack)."""


class InferenceError(RuntimeError):
    """The model's forward pass failed on an image (the route answers 422, never 500)."""


class ServingRuntime:
    """Model cache + per-checkpoint micro-batchers; create it in the app, `start()` in the
    lifespan (inside the event loop), `stop()` at shutdown.

    `fetch(checkpoint_id) -> bytes` reads a packed checkpoint from the store, and
    `deployed() -> list[str]` lists the deployed checkpoint ids; both are blocking and run
    in worker threads.
    """

    def __init__(self, settings: Settings, metrics: Metrics, *, fetch: Callable[[str], bytes],
                 deployed: Callable[[], list[str]]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._fetch = fetch
        self._deployed = deployed
        self.max_batch_size = settings.serving_max_batch_size
        self.max_wait = settings.serving_max_wait_ms / 1000.0
        self.threads = torch_threads(settings)
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
    def _init_inference_thread(self) -> None:
        import torch

        torch.set_num_threads(self.threads)

    async def start(self) -> None:
        import torch

        # Deliberate thread counts (see torch_threads); one inference thread, so concurrent
        # batches queue instead of oversubscribing the cores.
        torch.set_num_threads(self.threads)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference",
                                            initializer=self._init_inference_thread)
        self._refresher = asyncio.create_task(self._refresh_loop(), name="serving-refresh")
        log.info("serving: %d torch threads, max batch %d, max wait %.0f ms, model cache %d MiB",
                 self.threads, self.max_batch_size, self.max_wait * 1000, self.settings.serving_cache_max_bytes >> 20)

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
            data = await asyncio.to_thread(self._fetch, checkpoint_id)
            model, architecture, nbytes = await asyncio.to_thread(_unpack, data)
            await asyncio.get_running_loop().run_in_executor(self._executor, _warm_up, model)
        except (ValueError, LookupError, RuntimeError) as exc:  # CheckpointError is a ValueError
            self._failed[checkpoint_id] = f"{type(exc).__name__}: {exc}"[:300]
            log.error("serving: checkpoint %s cannot be served: %s", checkpoint_id, exc)
            raise ServingError(f"checkpoint {checkpoint_id} cannot be served: {exc}") from None
        loaded = LoadedModel(checkpoint_id, architecture, model, nbytes, time.perf_counter() - started)
        self._cache[checkpoint_id] = loaded
        self._cache_bytes += nbytes
        self._warmed.add(checkpoint_id)
        self._failed.pop(checkpoint_id, None)
        self._evict(keep=checkpoint_id)
        log.info("serving: loaded and warmed checkpoint %s (%s, %.1f MiB unpacked) in %.2fs", checkpoint_id,
                 architecture, nbytes / 2**20, loaded.load_seconds)
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
    async def detect(self, checkpoint_id: str, images: Sequence[Tensor]) -> list[Prediction]:
        """Predictions for `images` (FloatTensor[3, H, W] RGB in [0, 1]) from one checkpoint."""
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
            preds = await loop.run_in_executor(self._executor, _forward, loaded.model,
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
