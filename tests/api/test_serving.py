"""The serving runtime in-process: micro-batches, the byte-bounded LRU cache, failure isolation,
the OpenVINO and torch backends and the fallback between them."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from api import serving
from api.prometheus import Metrics
from api.serving import InferenceError, ServingError, ServingRuntime
from core.checkpoint import ModelCard, pack_checkpoint
from core.export.openvino import export_checkpoint
from service.settings import Settings

CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 4}


def packed(seed: int) -> bytes:
    torch.manual_seed(seed)
    card = ModelCard.model_validate(CARD)
    return pack_checkpoint(card.build().eval(), card)


BLOBS = {"a": packed(0), "b": packed(1), "old": packed(2)}
IR_ZIPS = {cid: export_checkpoint(data).zip_bytes() for cid, data in BLOBS.items() if cid != "old"}


def fetch(checkpoint_id: str, kind: str) -> bytes | None:
    return IR_ZIPS.get(checkpoint_id) if kind == "openvino" else BLOBS[checkpoint_id]


def runtime(**overrides: object) -> ServingRuntime:
    settings = Settings(serving_torch_threads=1, **overrides)
    return ServingRuntime(settings, Metrics(settings), fetch=fetch, deployed=lambda: ["a"])


def image(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


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
            images = [image(3, 40 + 8 * i, 60, i) for i in range(6)]
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


@pytest.mark.parametrize("backend", ["openvino", "torch"])
def test_batches_match_single_image_predictions(backend: str) -> None:
    async def go() -> tuple[list, list]:
        rt = runtime(serving_max_batch_size=8, serving_max_wait_ms=100, serving_backend=backend)
        await rt.start()
        try:
            # each resizes to a 64 x 64 canvas alone too (longer side 64, shorter > 48): torch's
            # batch pads nothing extra, so batching must not change a prediction (OpenVINO runs
            # each image on its own canvas anyway)
            images = [image(3, h, w, i) for i, (h, w) in enumerate([(60, 64), (64, 56), (52, 50)])]
            batched = await rt.detect("a", images)
            single = [(await rt.detect("a", [im]))[0] for im in images]
            assert rt._cache["a"].runner.backend == backend
            return batched, single
        finally:
            await rt.stop()

    batched, single = run(go())
    for b, s in zip(batched, single, strict=True):
        assert np.allclose(b.scores, s.scores, atol=1e-5)


def test_openvino_and_torch_backends_agree() -> None:
    async def go(backend: str) -> list:
        rt = runtime(serving_backend=backend)
        await rt.start()
        try:  # one image at a time: torch pads a batch to a common canvas, OpenVINO never does
            return [(await rt.detect("a", [im]))[0] for im in (image(3, 50, 64, 7), image(3, 64, 30, 8))]
        finally:
            await rt.stop()

    ov_preds, torch_preds = run(go("openvino")), run(go("torch"))
    for a, b in zip(ov_preds, torch_preds, strict=True):
        assert len(a.scores) == len(b.scores)
        assert np.allclose(a.scores, b.scores, atol=1e-4)
        assert np.allclose(a.boxes, b.boxes, atol=1e-2)


def test_openvino_predictions_do_not_depend_on_the_batch() -> None:
    async def go() -> tuple[list, list]:
        rt = runtime(serving_max_batch_size=8, serving_max_wait_ms=100)
        await rt.start()
        try:
            images = [image(3, h, w, i) for i, (h, w) in enumerate([(40, 64), (64, 20), (33, 50)])]
            return await rt.detect("a", images), [(await rt.detect("a", [im]))[0] for im in images]
        finally:
            await rt.stop()

    batched, single = run(go())
    for b, s in zip(batched, single, strict=True):
        assert b.scores == s.scores and b.boxes == s.boxes


def test_a_checkpoint_without_an_openvino_export_falls_back_to_torch() -> None:
    async def go() -> tuple[str, str, list]:
        rt = runtime()
        await rt.start()
        try:
            preds = await rt.detect("old", [image(3, 40, 60)])
            return rt._cache["old"].runner.backend, (await rt.model("a")).runner.backend, preds
        finally:
            await rt.stop()

    old_backend, new_backend, preds = run(go())
    assert (old_backend, new_backend) == ("torch", "openvino") and len(preds) == 1


def test_cache_is_bounded_by_bytes_and_counts_hits() -> None:
    one_model = 40_000  # the tiny PedNet unpacks to ~20 KB: room for one, not two

    async def go() -> ServingRuntime:
        rt = runtime(serving_cache_max_bytes=one_model, serving_backend="torch")
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
    real = serving._predict

    def predict(runner, images):
        if any(im.shape[-1] == 13 for im in images):
            raise RuntimeError("boom")
        return real(runner, images)

    monkeypatch.setattr(serving, "_predict", predict)

    async def go() -> list:
        rt = runtime(serving_max_batch_size=4, serving_max_wait_ms=200)
        await rt.start()
        try:
            await rt.model("a")
            images = [image(3, 32, 40), image(3, 32, 13), image(3, 32, 50)]
            return await asyncio.gather(*(rt.detect("a", [im]) for im in images), return_exceptions=True)
        finally:
            await rt.stop()

    ok1, bad, ok2 = run(go())
    assert isinstance(bad, InferenceError) and "boom" in str(bad)
    assert isinstance(ok1, list) and isinstance(ok2, list)


def test_unknown_or_broken_checkpoint() -> None:
    async def go() -> tuple[bool, str]:
        settings = Settings(serving_torch_threads=1)
        rt = ServingRuntime(settings, Metrics(settings), fetch=lambda cid, kind: b"not a checkpoint",
                            deployed=lambda: ["x"])
        await rt.start()
        try:
            with pytest.raises(ServingError, match="checkpoint x cannot be served"):
                await rt.detect("x", [image(3, 32, 32)])
            return await rt.readiness()
        finally:
            await rt.stop()

    ready, detail = run(go())
    assert not ready and detail == "1 deployed checkpoint(s) failed to load (see the API log)"  # no ids: /readyz takes no key
