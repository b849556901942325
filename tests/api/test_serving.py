"""The serving runtime in-process: micro-batches, the byte-bounded LRU cache, failure isolation."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from api import serving
from api.metrics import Metrics
from api.serving import InferenceError, ServingError, ServingRuntime
from core.checkpoint import ModelCard, pack_checkpoint
from core.settings import Settings

CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 4}


def packed(seed: int) -> bytes:
    torch.manual_seed(seed)
    card = ModelCard.model_validate(CARD)
    return pack_checkpoint(card.build().eval(), card)


BLOBS = {"a": packed(0), "b": packed(1)}


def runtime(**overrides: object) -> ServingRuntime:
    settings = Settings(serving_torch_threads=1, **overrides)
    return ServingRuntime(settings, Metrics(settings), fetch=lambda cid: BLOBS[cid], deployed=lambda: ["a"])


def run(coro):
    """asyncio.run on a fresh thread: immune to an event loop left running in the main thread
    (Playwright's sync API in the e2e tests)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def sample(rt: ServingRuntime, name: str) -> float:
    return rt.metrics.registry.get_sample_value(name) or 0.0


def test_concurrent_images_share_forward_passes() -> None:
    async def go() -> tuple[ServingRuntime, list]:
        rt = runtime(serving_max_batch_size=4, serving_max_wait_ms=200)
        await rt.start()
        try:
            await rt.model("a")
            images = [torch.rand(3, 40 + 8 * i, 60) for i in range(6)]
            results = await asyncio.gather(*(rt.detect("a", [im]) for im in images))
            return rt, results
        finally:
            await rt.stop()

    rt, results = run(go())
    assert len(results) == 6 and all(len(r) == 1 for r in results)
    assert sample(rt, "flexbin_detect_batch_size_count") == 2  # 4 + 2 images, not 6 forwards
    assert sample(rt, "flexbin_detect_batch_size_sum") == 6
    for (pred,) in results:
        assert pred.scores == sorted(pred.scores, reverse=True)


def test_batches_match_single_image_predictions() -> None:
    async def go() -> tuple[list, list]:
        rt = runtime(serving_max_batch_size=8, serving_max_wait_ms=100)
        await rt.start()
        try:
            images = [torch.rand(3, 48, 32 + 16 * i, generator=torch.Generator().manual_seed(i)) for i in range(3)]
            batched = await rt.detect("a", images)
            single = [(await rt.detect("a", [im]))[0] for im in images]
            return batched, single
        finally:
            await rt.stop()

    batched, single = run(go())
    for b, s in zip(batched, single, strict=True):
        assert torch.allclose(torch.tensor(b.scores), torch.tensor(s.scores), atol=1e-5)


def test_cache_is_bounded_by_bytes_and_counts_hits() -> None:
    one_model = 40_000  # the tiny PedNet unpacks to ~20 KB: room for one, not two

    async def go() -> ServingRuntime:
        rt = runtime(serving_cache_max_bytes=one_model)
        await rt.start()
        try:
            await rt.model("a")
            await rt.model("a")
            await rt.model("b")  # evicts a
            assert list(rt._cache) == ["b"]
            await rt.model("a")  # loaded again
            assert await rt.readiness() == (True, "ok")
            return rt
        finally:
            await rt.stop()

    rt = run(go())
    assert sample(rt, "flexbin_model_cache_misses_total") == 3
    assert sample(rt, "flexbin_model_cache_hits_total") == 1
    assert sample(rt, "flexbin_model_cache_models") == 1


def test_a_failing_image_fails_only_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    real = serving._forward

    def forward(model, images):
        if any(im.shape[-1] == 13 for im in images):
            raise RuntimeError("boom")
        return real(model, images)

    monkeypatch.setattr(serving, "_forward", forward)

    async def go() -> list:
        rt = runtime(serving_max_batch_size=4, serving_max_wait_ms=200)
        await rt.start()
        try:
            await rt.model("a")
            images = [torch.rand(3, 32, 40), torch.rand(3, 32, 13), torch.rand(3, 32, 50)]
            return await asyncio.gather(*(rt.detect("a", [im]) for im in images), return_exceptions=True)
        finally:
            await rt.stop()

    ok1, bad, ok2 = run(go())
    assert isinstance(bad, InferenceError) and "boom" in str(bad)
    assert isinstance(ok1, list) and isinstance(ok2, list)


def test_unknown_or_broken_checkpoint() -> None:
    async def go() -> tuple[bool, str]:
        settings = Settings(serving_torch_threads=1)
        rt = ServingRuntime(settings, Metrics(settings), fetch=lambda cid: b"not a checkpoint",
                            deployed=lambda: ["x"])
        await rt.start()
        try:
            with pytest.raises(ServingError, match="checkpoint x cannot be served"):
                await rt.detect("x", [torch.rand(3, 32, 32)])
            return await rt.readiness()
        finally:
            await rt.stop()

    ready, detail = run(go())
    assert not ready and detail == "1 deployed checkpoint(s) failed to load (see the API log)"  # no ids: /readyz takes no key
