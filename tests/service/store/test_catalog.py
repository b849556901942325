"""The one way in for models and datasets (`service.store.catalog`): validated with core, then
stored; a refused input stores nothing and says what is wrong."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.settings import Settings
from service.store import Blob, Dataset, DetectorModel, session_scope
from service.store.catalog import InvalidUpload, TooLarge, store_dataset, store_model
from service.store.migrate import upgrade_head
from service.store.tenants import ensure_tenant
from testkit.factories import TINY_CARD, dataset_zip, tiny_model


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/catalog.db"
    upgrade_head(url)
    return url


def _rows(url: str) -> tuple[int, int, int]:
    with session_scope(url) as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) or 0 for t in (DetectorModel, Dataset, Blob))  # type: ignore[return-value]


def test_a_valid_model_and_dataset_are_stored_with_what_core_read(url: str) -> None:
    weights, card = tiny_model()
    with session_scope(url) as s:
        tenant = ensure_tenant(s, "acme")
        model = store_model(s, tenant.id, Settings(), weights, card, name="tiny")
        dataset = store_dataset(s, tenant.id, Settings(), dataset_zip(3), name="three")
        assert (model.architecture, model.num_classes, model.size_bytes) == ("flexbin_pednet", 2, len(weights))
        assert model.num_params > 0 and model.card["width"] == TINY_CARD["width"]
        assert (dataset.num_images, dataset.name) == (3, "three") and dataset.num_boxes >= 3
    assert _rows(url) == (1, 1, 2)


@pytest.mark.parametrize(("weights", "card", "error", "match"), [
    (b"", json.dumps(TINY_CARD), InvalidUpload, "weights: empty file"),
    (b"not safetensors", json.dumps(TINY_CARD), InvalidUpload, "not a valid safetensors"),
    (None, json.dumps({**TINY_CARD, "architecture": "nope"}), InvalidUpload, "architecture"),
    (None, json.dumps({**TINY_CARD, "width": 8}), InvalidUpload, "shape"),
    (b"x" * 2002, json.dumps(TINY_CARD), TooLarge, "over the limit of 2001"),
])
def test_a_refused_model_stores_nothing(url: str, weights: bytes | None, card: str, error: type[Exception],
                                        match: str) -> None:
    limits = Settings(max_model_bytes=2001 if error is TooLarge else Settings().max_model_bytes)
    with session_scope(url) as s, pytest.raises(error, match=match):
        store_model(s, ensure_tenant(s, "acme").id, limits, tiny_model()[0] if weights is None else weights, card)
    assert _rows(url) == (0, 0, 0)


def test_a_refused_dataset_stores_nothing(url: str) -> None:
    with session_scope(url) as s, pytest.raises(InvalidUpload, match="archive: empty file"):
        store_dataset(s, ensure_tenant(s, "acme").id, Settings(), b"")
    with session_scope(url) as s, pytest.raises(InvalidUpload, match="zip"):
        store_dataset(s, ensure_tenant(s, "acme").id, Settings(), b"PK\x03\x04 not really a zip")
    with session_scope(url) as s, pytest.raises(TooLarge, match="archive"):
        store_dataset(s, ensure_tenant(s, "acme").id, Settings(max_dataset_bytes=100), dataset_zip(1))
    assert _rows(url) == (0, 0, 0)
