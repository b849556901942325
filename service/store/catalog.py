"""Models and datasets: validated with `core`, then stored. The one way in for both, whether a
user uploads them (`POST /models`, `POST /datasets`) or the demo seeds them.

A model must load strictly into the architecture its card names (every key and shape) and
run one forward pass on a dummy image; a dataset zip is parsed whole (layout, every image
decodes, every box inside its image, the zip-bomb limits). Nothing is stored otherwise. The
errors are ValueErrors whose message names the problem; the API answers them with a 4xx.
"""
from __future__ import annotations

import json

from sqlalchemy.orm import Session

from service.settings import Settings
from service.store.blobs import put_blob
from service.store.tables import Dataset, DetectorModel


class TooLarge(ValueError):
    """An input over its configured limit."""


class InvalidUpload(ValueError):
    """An input that `core` rejected; the message names the problem."""


def store_model(session: Session, tenant_id: str, settings: Settings, weights: bytes, card_json: str,
                name: str | None = None) -> DetectorModel:
    """Validate a float detector (safetensors weights + JSON card), then store it for the tenant."""
    # keeps the API free of torch until an upload is validated
    from core.checkpoint import check_forward, load_model_bytes

    if len(weights) > settings.max_model_bytes:
        raise TooLarge(f"weights: {len(weights)} bytes, over the limit of {settings.max_model_bytes}")
    if len(card_json.encode()) > settings.max_card_bytes:
        raise TooLarge(f"card: over the limit of {settings.max_card_bytes} bytes")
    if not weights:
        raise InvalidUpload("weights: empty file")
    try:
        model, card = load_model_bytes(weights, card_json)
        check_forward(model, card)
    except ValueError as exc:  # CheckpointError and friends name the problem
        raise InvalidUpload(str(exc)) from None
    num_params = sum(p.numel() for p in model.parameters())
    row = DetectorModel(
        tenant_id=tenant_id,
        name=name,
        architecture=card.architecture,
        num_classes=card.num_classes,
        num_params=num_params,
        size_bytes=len(weights),
        card=json.loads(card.model_dump_json()),
        weights_blob_id=put_blob(session, weights).id,
    )
    session.add(row)
    session.flush()
    return row


def store_dataset(session: Session, tenant_id: str, settings: Settings, archive: bytes,
                  name: str | None = None) -> Dataset:
    """Validate a dataset zip (Penn-Fudan or COCO layout), then store it, as uploaded, for the tenant."""
    # keeps the API free of torch until an upload is validated
    from core.data import read_dataset_zip

    if len(archive) > settings.max_dataset_bytes:
        raise TooLarge(f"archive: {len(archive)} bytes, over the limit of {settings.max_dataset_bytes}")
    if not archive:
        raise InvalidUpload("archive: empty file")
    try:
        records = read_dataset_zip(archive, **settings.dataset_zip_limits())
    except ValueError as exc:
        raise InvalidUpload(str(exc)) from None
    if not records:
        raise InvalidUpload("archive: the dataset holds no images")
    num_boxes = sum(int(r.boxes.shape[0]) for r in records)
    row = Dataset(
        tenant_id=tenant_id,
        name=name,
        num_images=len(records),
        num_boxes=num_boxes,
        size_bytes=len(archive),
        archive_blob_id=put_blob(session, archive).id,
    )
    session.add(row)
    session.flush()
    return row
