"""Tenant isolation, swept from the app's own OpenAPI schema, and API-key hygiene.

Alpha owns one of every resource (model, dataset, a finished job with its checkpoints, a
deployment). Beta then tries every route that takes an id, every body / form field that
references one, and every listing: a foreign id must answer exactly like an unknown one
(404 with a JSON `detail`), store nothing, and never show up in beta's answers. A route
added later with an id path parameter that this file does not know how to fill fails the
sweep until it is mapped here. Finally: neither key appears in any service log, and the
database holds only sha256 digests of them."""
from __future__ import annotations

import hashlib
import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import JSON, String, Text, select

from service.store import ApiKey, get_sessionmaker
from service.store.tables import Base
from testkit.factories import dataset_zip, run_tiny_job, tiny_model
from testkit.stack import KEYS

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
# First path segment -> the kind of alpha's resource whose id fills the route's path parameter.
KIND_BY_PREFIX = {"models": "model", "datasets": "dataset", "jobs": "job", "checkpoints": "checkpoint"}
# The id routes of today: the sweep must at least cover these (a renamed route shows up here).
KNOWN_ID_ROUTES = {
    ("GET", "/models/{model_id}"),
    ("GET", "/datasets/{dataset_id}"),
    ("GET", "/jobs/{job_id}"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("GET", "/checkpoints/{checkpoint_id}"),
    ("GET", "/checkpoints/{checkpoint_id}/download"),
}
# Id routes that need a request body to get past validation: (method, path) -> JSON body.
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {}
BOGUS_KEY = "key-isolation-never-valid-5e0c1b"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 130, 140)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def alpha(api_url: str, start_worker) -> Iterator[dict[str, Any]]:
    """One of each of alpha's resources: model, dataset, a succeeded job, its checkpoints, a deployment."""
    worker = start_worker("isolation-worker")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=120) as c:
        job = run_tiny_job(c, {"target": {"min_compression_ratio": 2.0}, "finetune_iters": 1, "batch_size": 2})
        checkpoint = job["selected_checkpoint_id"]
        r = c.put("/deployment", json={"checkpoint_id": checkpoint})
        assert r.status_code == 200 and r.json()["checkpoint_id"] == checkpoint, r.text
        ids = {"model": job["model_id"], "dataset": job["dataset_id"], "job": job["id"],
               "checkpoint": checkpoint, "checkpoints": [s["checkpoint_id"] for s in job["steps"]]}
        ids["all"] = {ids["model"], ids["dataset"], ids["job"], *ids["checkpoints"]}
        yield ids
    worker.stop()


@pytest.fixture(scope="module")
def beta_own(api_url: str) -> dict[str, str]:
    """Beta's own model and dataset, to pair with one of alpha's ids at a time."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['beta']}"}, timeout=120) as c:
        weights, card = tiny_model(seed=1)
        model = c.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": card})
        dataset = c.post("/datasets", files={"archive": ("d.zip", dataset_zip(4))})
        assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
        return {"model": model.json()["id"], "dataset": dataset.json()["id"]}


def _operations(client: httpx.Client) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """(METHOD, path, operation, path parameter names) of every operation in /openapi.json."""
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    ops = []
    for path, item in r.json()["paths"].items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            names = [p["name"] for p in [*shared, *op.get("parameters", [])] if p.get("in") == "path"]
            ops.append((method.upper(), path, op, names))
    return ops


def _kind(path: str, param: str) -> str | None:
    """The kind of resource a path parameter names: `<kind>_id`, or `{id}` under a known prefix."""
    kind = param.removesuffix("_id")
    if param.endswith("_id") and kind in KIND_BY_PREFIX.values():
        return kind
    if param == "id":
        return KIND_BY_PREFIX.get(path.strip("/").split("/")[0])
    return None


def _assert_json_404(r: httpx.Response, what: str) -> str:
    assert r.status_code == 404, (what, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), (what, r.headers["content-type"])
    detail = r.json().get("detail")
    assert isinstance(detail, str) and detail, (what, r.text)
    return detail


def test_every_id_route_answers_404_to_another_tenant(alpha, client, other_client, db_counts) -> None:
    id_routes = [(m, p, op, names) for m, p, op, names in _operations(client) if names]
    before = db_counts()
    swept, unmapped = set(), []
    for method, path, op, names in id_routes:
        kinds = {name: _kind(path, name) for name in names}
        if None in kinds.values():
            unmapped.append(f"{method} {path}: no alpha resource for {names} (map it in KIND_BY_PREFIX)")
            continue
        body = REQUEST_BODIES.get((method, path))
        if op.get("requestBody", {}).get("required") and body is None:
            unmapped.append(f"{method} {path}: needs a request body (add one to REQUEST_BODIES)")
            continue
        foreign = {name: alpha[kind] for name, kind in kinds.items()}
        unknown = {name: uuid.uuid4().hex for name in names}
        r = other_client.request(method, path.format(**foreign), json=body)
        detail = _assert_json_404(r, f"beta {method} {path} with alpha's id")
        # indistinguishable from an id that exists nowhere
        r_unknown = other_client.request(method, path.format(**unknown), json=body)
        detail_unknown = _assert_json_404(r_unknown, f"beta {method} {path} with an unknown id")
        for name in names:
            detail, detail_unknown = detail.replace(foreign[name], "<id>"), detail_unknown.replace(unknown[name], "<id>")
        assert detail == detail_unknown, (method, path, detail, detail_unknown)
        if method == "GET":  # positive control: the id is right, only the tenant is wrong
            assert client.get(path.format(**foreign)).status_code == 200, (path, foreign)
        swept.add((method, path))
    assert not unmapped, "routes the isolation sweep cannot fill:\n" + "\n".join(unmapped)
    assert swept == {(m, p) for m, p, _, _ in id_routes}
    assert KNOWN_ID_ROUTES <= swept, KNOWN_ID_ROUTES - swept
    assert db_counts() == before
    # alpha's job was neither cancelled nor otherwise touched by beta's POST
    job = client.get(f"/jobs/{alpha['job']}").json()
    assert job["status"] == "succeeded" and not job["cancel_requested"]


def test_id_fields_in_bodies_and_forms_answer_404(alpha, beta_own, client, other_client, db_counts) -> None:
    deployment_before = other_client.get("/deployment").json()
    before = db_counts()
    target = {"target": {"min_compression_ratio": 2.0}}
    for model_id, dataset_id, names in (
        (alpha["model"], alpha["dataset"], "model"),
        (alpha["model"], beta_own["dataset"], "model"),
        (beta_own["model"], alpha["dataset"], "dataset"),
    ):
        r = other_client.post("/jobs", json={"model_id": model_id, "dataset_id": dataset_id, **target})
        assert names in _assert_json_404(r, f"POST /jobs {names}"), r.text
    for checkpoint_id in alpha["checkpoints"]:
        r = other_client.put("/deployment", json={"checkpoint_id": checkpoint_id})
        _assert_json_404(r, "PUT /deployment with alpha's checkpoint")
        r = other_client.post("/detect", files={"images": ("p.png", _png(), "image/png")},
                              data={"checkpoint_id": checkpoint_id})
        _assert_json_404(r, "POST /detect with alpha's checkpoint")
    assert db_counts() == before
    assert other_client.get("/deployment").json() == deployment_before
    assert client.get("/deployment").json()["checkpoint_id"] == alpha["checkpoint"]


def test_listings_never_show_another_tenants_ids(alpha, client, other_client) -> None:
    listings = sorted({p for m, p, _, names in _operations(client) if m == "GET" and not names})
    assert {"/jobs", "/deployment"} <= set(listings), listings
    # positive control: alpha's own listing does show its job
    assert alpha["job"] in {j["id"] for j in client.get("/jobs", params={"limit": 1000}).json()["data"]}
    for path in listings:
        params = {"limit": 1000} if path == "/jobs" else None
        r = other_client.get(path, params=params)
        assert r.status_code == 200, (path, r.text)
        leaked = sorted(i for i in alpha["all"] if i in r.text)
        assert not leaked, f"beta's GET {path} shows alpha's ids {leaked}"


def test_detect_never_falls_back_to_another_tenants_deployment(alpha, client, other_client) -> None:
    image = {"images": ("p.png", _png(), "image/png")}
    r = client.post("/detect", files=image)
    assert r.status_code == 200 and r.json()["checkpoint_id"] == alpha["checkpoint"], r.text
    beta_deployment = other_client.get("/deployment").json()
    assert beta_deployment["checkpoint_id"] not in alpha["all"]
    r = other_client.post("/detect", files=image)
    if beta_deployment["checkpoint_id"] is None:
        assert r.status_code == 409 and "nothing is deployed" in r.json()["detail"], r.text
    else:
        assert r.status_code == 200 and r.json()["checkpoint_id"] == beta_deployment["checkpoint_id"], r.text
    assert not [i for i in alpha["all"] if i in r.text], r.text


def test_api_keys_are_never_logged_nor_stored_in_clear(alpha, api_url, log_dir: Path, database_url) -> None:
    r = httpx.get(f"{api_url}/jobs", headers={"Authorization": f"Bearer {BOGUS_KEY}"}, timeout=30)
    assert r.status_code == 401 and BOGUS_KEY not in r.text
    secrets = [*KEYS.values(), BOGUS_KEY]

    logs = sorted(p for p in log_dir.rglob("*") if p.is_file())
    assert {"api.log", "isolation-worker.log"} <= {p.name for p in logs}, logs
    assert "HTTP/1.1" in (log_dir / "api.log").read_text(errors="replace")  # requests are logged at all
    for path in logs:
        text = path.read_text(errors="replace")
        found = [k for k in secrets if k in text]
        assert not found, f"{path.name} contains API key(s) {found}"

    with get_sessionmaker(database_url)() as s:
        hashes = set(s.scalars(select(ApiKey.key_hash)))
        assert hashes == {hashlib.sha256(k.encode()).hexdigest() for k in KEYS.values()}
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
        # no text or JSON column anywhere holds a key in clear
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
            if not columns:
                continue
            for row in s.execute(select(*columns)):
                cells = " ".join(str(v) for v in row if v is not None)
                assert not [k for k in secrets if k in cells], (table.name, cells[:200])
