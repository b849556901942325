"""Schema fuzzing: schemathesis generates requests from the API's own OpenAPI schema and sends
them, authenticated, to the real API over HTTP (PostgreSQL behind it). Every response must be
below 500 and conform to the schema (status code documented, content type, body schema).

Bounded: `EXAMPLES` generated cases per operation and generation mode (positive: valid by the
schema; negative: invalid), no shrinking, no example database, so the run is reproducible in
size and takes well under a minute. Path ids are real resources half the time (a model, a
dataset and a queued job of the fuzzing tenant), so the lookups succeed as well as fail.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import ServerError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from testkit.factories import dataset_zip, tiny_model
from testkit.stack import KEYS

EXAMPLES = 60  # per operation and mode: ~1,300 requests in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Not fuzzed here: the multipart uploads (schemathesis fills `format: binary` with random bytes,
# which never gets past the first format check); tests/integration/test_hostile_uploads.py sends
# crafted hostile files to them instead.
SKIP = {("POST", "/models"), ("POST", "/datasets"), ("POST", "/detect")}


@pytest.fixture(scope="module")
def fuzz_ids(api_url: str) -> Any:
    """Real resources of the fuzzing tenant (beta), substituted into generated requests."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['beta']}"}, timeout=120) as c:
        weights, card = tiny_model()
        model = c.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": card})
        dataset = c.post("/datasets", files={"archive": ("d.zip", dataset_zip(2))})
        assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
        job = c.post("/jobs", json={"model_id": model.json()["id"], "dataset_id": dataset.json()["id"],
                                    "target": {"min_compression_ratio": 2.0}})
        assert job.status_code == 202, job.text
        ids = {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"], "job_id": job.json()["id"]}
        yield ids
        # leave no queued job behind for a later test's worker
        listing = c.get("/jobs", params={"limit": 1000}).json()
        for j in listing["data"]:
            if j["status"] in ("queued", "running"):
                c.post(f"/jobs/{j['id']}/cancel")


def _mode(case: schemathesis.Case) -> str:
    meta = getattr(case, "meta", None)
    return str(getattr(getattr(meta, "generation", None), "mode", "?"))


def test_schema_fuzz(api_url: str, fuzz_ids: dict[str, str], record_figures: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    headers = {"Authorization": f"Bearer {KEYS['beta']}"}
    statuses: Counter[int] = Counter()
    failed: Counter[str] = Counter()
    violating = [0]  # responses with a failed check other than "server error" (status, content type, body)
    examples: dict[str, str] = {}
    operations = []
    unsatisfiable: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue
        operations.append(f"{op.method.upper()} {op.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode), real=st.booleans())
            def run(case: schemathesis.Case, real: bool) -> None:
                if real:
                    for name in list(case.path_parameters or {}):
                        if name in fuzz_ids:
                            case.path_parameters[name] = fuzz_ids[name]
                    if isinstance(case.body, dict):
                        for name in ("model_id", "dataset_id"):
                            if name in case.body:
                                case.body[name] = fuzz_ids[name]
                # always the valid key (the security scheme makes schemathesis generate random
                # bearer values, or none in negative mode; auth is tested in test_uploads.py)
                case.headers = {**(case.headers or {}), **headers}
                response = case.call(timeout=30)
                statuses[response.status_code] += 1
                try:
                    case.validate_response(response, checks=CHECKS, headers=headers)
                except (AssertionError, BaseExceptionGroup) as exc:  # keep going: report each kind once
                    found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
                    violating[0] += any(not isinstance(f, ServerError) for f in found)
                    for failure in found:
                        title = str(getattr(failure, "title", "")) or str(failure).splitlines()[0]
                        key = f"{case.operation.label} [{_mode(case)}] -> {response.status_code}: {title}"
                        failed[key] += 1
                        if failed[key] == 1:
                            examples[key] = f"{str(failure)[:800]}\n  {case.as_curl_command(headers=headers)}"

            try:
                run()
            except Unsatisfiable:  # negative mode of an operation without inputs: nothing to negate
                assert mode is GenerationMode.NEGATIVE, op.label
                unsatisfiable.append(op.label)
    elapsed = time.monotonic() - started
    total = sum(statuses.values())
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    print(f"\nschema fuzz: {total} requests over {len(operations)} operations in {elapsed:.1f}s; "
          f"statuses {dict(sorted(statuses.items()))}; 5xx {server_errors}; failures {sum(failed.values())} "
          f"({len(failed)} kinds); "
          f"no negative cases for {unsatisfiable}")
    record_figures("fuzz.schema", requests=total, server_errors=server_errors, schema_violations=violating[0],
                   check_failures=sum(failed.values()), failure_kinds=len(failed), operations=len(operations),
                   operations_skipped=sorted(f"{m} {p}" for m, p in SKIP), examples_per_operation_and_mode=EXAMPLES,
                   statuses={str(k): n for k, n in sorted(statuses.items())}, seconds=round(elapsed, 1))
    assert "GET /jobs/{job_id}" in operations and "PUT /deployment" in operations, operations
    report = [f"{n} x {key}\n{examples[key]}" for key, n in failed.most_common()]
    assert server_errors == 0 and not failed, "\n\n".join(report)
    assert total >= 1000, statuses


def test_fuzz_regressions(other_client: httpx.Client, fuzz_ids: dict[str, str], db_counts: Any) -> None:
    """The 5xx and schema violations the fuzzer found, kept as plain requests (as beta, who
    owns `fuzz_ids`)."""
    client = other_client
    before = db_counts()
    # OFFSET past PostgreSQL's BIGINT was a 500
    r = client.get("/jobs", params={"skip": 28597906528770539648901588742832128, "limit": 53})
    assert r.status_code == 422 and "skip" in r.json()["detail"], r.text
    # a NUL character in an id reached PostgreSQL ("cannot contain NUL") and was a 500
    nul = "\x00abc"
    body = {"model_id": nul, "dataset_id": fuzz_ids["dataset_id"], "target": {"min_compression_ratio": 2.0}}
    r = client.post("/jobs", json=body)
    assert r.status_code == 404 and "model" in r.json()["detail"], r.text
    r = client.post("/jobs", json={**body, "model_id": fuzz_ids["model_id"], "dataset_id": nul})
    assert r.status_code == 404 and "dataset" in r.json()["detail"], r.text
    assert client.put("/deployment", json={"checkpoint_id": nul}).status_code == 404
    for path in ("/models/%00", "/datasets/%00", "/jobs/%00", "/checkpoints/%00", "/checkpoints/%00/download"):
        r = client.get(path)
        assert r.status_code == 404 and isinstance(r.json()["detail"], str), (path, r.text)
    assert client.post("/jobs/%00/cancel").status_code == 404
    # 422 (and every other error) is documented as {"detail": "<string>"}, as answered
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if path in ("/healthz", "/readyz", "/metrics"):
                continue
            responses = op["responses"]
            assert {"401", "422"} <= responses.keys(), (method, path)
            ref = responses["422"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/Message"), (method, path, ref)
    assert db_counts() == before
