"""The demo seeded on an empty database (shared/API.md, `make run`).

Gets the demo's float detector (`service.demo`: Intel's pretrained pedestrian-detection-adas-0002
by default, or FlexBin's PedNet trained on the Penn-Fudan images at `FLEXBIN_DEMO_DATA`), stores
it and the dataset for the demo tenant through the same functions a user's uploads go through
(`service.store.catalog`: validated, then stored), deploys the float model, and queues a
layer-priority binarization job (`service.store.jobs.create_job`, as `POST /jobs`) that deploys
its selected checkpoint when it succeeds. `/detect` serves
packed checkpoints only, so "deploys the float model" means: the deployment names the model
with no checkpoint (409 on `/detect`) until the job commits step 0 (the float model, packed),
which `worker.jobs` then deploys at once; the selected checkpoint replaces it at the end.
Runs as the `demo.seed` task, so the API process never trains.
"""
from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path

from sqlalchemy import select

from core.checkpoint import save_model_bytes
from core.data import read_pennfudan, split_records
from core.train import IterationReport
from service.demo import DEMO_MODEL_NAMES, demo_float_model, demo_pipeline_config
from service.queue import send_job
from service.settings import Settings
from service.store import DetectorModel, catalog, deployments, jobs, session_scope
from service.store.tenants import ensure_tenant
from worker.celery_app import celery_app
from worker.device import resolve_device
from worker.jobs import SHUTTING_DOWN

log = logging.getLogger(__name__)

DEMO_DATASET_NAME = "demo: PennFudanPed"


class DemoInterrupted(RuntimeError):
    """The worker is shutting down; the database is still empty, so the next start seeds again."""


def zip_pennfudan(root: Path) -> bytes:
    """The dataset in the upload layout (PNGImages/ + Annotation/), stored uncompressed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for folder in ("PNGImages", "Annotation"):
            for path in sorted((root / folder).iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    zf.write(path, f"{folder}/{path.name}")
    return buf.getvalue()


def seed_demo(settings: Settings) -> str:
    tenant_name = settings.demo_tenant()
    with session_scope(settings.database_url) as s:
        tenant = ensure_tenant(s, tenant_name)
        seeded = select(DetectorModel.id).where(DetectorModel.tenant_id == tenant.id,
                                                DetectorModel.name.in_(list(DEMO_MODEL_NAMES.values())))
        if s.scalar(seeded):
            log.info("demo: already seeded for tenant %s", tenant_name)
            return "exists"
    root = settings.demo_data
    records = read_pennfudan(root)
    train, val = split_records(records)
    device = resolve_device(settings.device)
    log.info("demo: preparing %s on %s (%d train / %d val Penn-Fudan images)", settings.demo_model, device,
             len(train), len(val))
    started = time.monotonic()
    last = [0.0]

    def report(it: IterationReport) -> None:
        if SHUTTING_DOWN.is_set():
            raise DemoInterrupted("worker shutting down during demo training; it starts again on the next start")
        now = time.monotonic()
        if now - last[0] >= 15 or it.iteration == it.total:
            last[0] = now
            eta = it.seconds / it.iteration * (it.total - it.iteration)
            log.info("demo: training iteration %d/%d, loss %.3f, about %.0fs left", it.iteration, it.total,
                     it.loss, eta)

    model, card = demo_float_model(settings, train, val, on_iteration=report, device=device)
    model.to("cpu").eval()
    log.info("demo: %s ready in %.0fs (validation: %s)", card.architecture, time.monotonic() - started,
             card.metrics)
    weights, card_json = save_model_bytes(model, card)
    archive = zip_pennfudan(root)
    config = demo_pipeline_config(settings)
    with session_scope(settings.database_url) as s:  # what POST /models, /datasets and /jobs do
        tenant = ensure_tenant(s, tenant_name)
        model_row = catalog.store_model(s, tenant.id, settings, weights, card_json,
                                        name=DEMO_MODEL_NAMES[settings.demo_model])
        dataset_row = catalog.store_dataset(s, tenant.id, settings, archive, name=DEMO_DATASET_NAME)
        job = jobs.create_job(s, tenant_id=tenant.id, model_id=model_row.id, dataset_id=dataset_row.id,
                              config=config, deploy_on_success=True)
        deployments.deploy(s, tenant.id, checkpoint_id=None, model_id=model_row.id)
        job_id = job.id
    send_job(celery_app, settings, job_id)
    log.info("demo: model %s deployed (float); binarization job %s queued", model_row.id, job_id)
    return job_id
