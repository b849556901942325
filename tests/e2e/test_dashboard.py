"""The dashboard at `GET /` in headless Chromium against the real API + a Celery worker on
PostgreSQL + Redis: sign in, upload, start a job and watch it live, plots, deploy, try it.

The tests run in file order on one browser page (each builds on the one before). Screenshots
go to tests/artifacts/ (not committed); with FLEXBIN_DOCS_SCREENSHOTS=1 also to docs/. For the
docs' screenshots, FLEXBIN_E2E_MODEL=<dir with weights.safetensors + card.json> (a trained
model, e.g. from `python -m core train`) and FLEXBIN_E2E_IMAGES=<n> replace the untrained tiny
model and the 8 images the tests use by default.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.paths import default_data_dir
from testkit.factories import dataset_zip, tiny_model
from testkit.fixtures import EXPORT_ON
from testkit.stack import KEYS, wait_until

pytestmark = pytest.mark.timeout(300)
WORKER_ENV = EXPORT_ON  # each step's latency: the table column and the plot's x axis

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCS_PAGES = {"jobs", "job", "upload", "tryit"}  # the screenshots the README shows
IMAGE = default_data_dir() / "PNGImages" / "FudanPed00001.png"
# Steps must last several seconds on an idle machine too (about 20 ms per iteration here), so
# the 1 s progress reports, 0.5 s database writes and 1.5 s page polls catch one mid-step.
JOB = {"target": {"min_compression_ratio": 4.0}, "finetune_iters": 250, "batch_size": 2, "seed": 3}
MODEL_DIR = os.environ.get("FLEXBIN_E2E_MODEL")
NUM_IMAGES = int(os.environ.get("FLEXBIN_E2E_IMAGES", "8"))
JOB_TIMEOUT = 600 if MODEL_DIR else 150


def upload_model() -> tuple[bytes, str]:
    if MODEL_DIR:
        return (Path(MODEL_DIR) / "weights.safetensors").read_bytes(), (Path(MODEL_DIR) / "card.json").read_text()
    return tiny_model()


@pytest.fixture(scope="module")
def api(api_url: str) -> Iterator[httpx.Client]:
    """Direct API access, to compare what the page shows with what the API says."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def page(browser, api_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=api_url)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


def shot(page: Any, artifacts: Path, name: str) -> None:
    path = artifacts / f"dashboard-{name}.png"
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header belongs at the top of a full-page shot
    page.evaluate("document.querySelector('#toast').hidden = true")
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FLEXBIN_DOCS_SCREENSHOTS") and name in DOCS_PAGES:
        shutil.copyfile(path, DOCS / path.name)


def count(page: Any, selector: str) -> int:
    return page.locator(selector).count()


def test_served_without_a_key_and_nothing_from_outside(api_url: str) -> None:
    index = httpx.get(f"{api_url}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    static = Path(__file__).resolve().parents[2] / "api" / "static"
    for name in ("app.js", "style.css"):
        r = httpx.get(f"{api_url}/static/{name}")
        assert r.status_code == 200 and r.content == (static / name).read_bytes()
        assert f"/static/{name}" in index.text
    # no CDN: the only absolute URL is the SVG namespace
    for path in static.iterdir():
        text = path.read_text()
        urls = {u for u in text.split() if "http://" in u or "https://" in u}
        assert all("www.w3.org/2000/svg" in u for u in urls), (path.name, urls)


def test_sign_in(page, artifacts) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    expect(page.locator("#page-signin")).to_be_visible()
    shot(page, artifacts, "signin")
    page.fill("#signin-key", "not-a-key")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("invalid API key")

    page.fill("#signin-key", KEYS["alpha"])
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#page-jobs")).to_be_visible()
    expect(page.locator("#jobs-empty")).to_be_visible()
    # the key is in this tab's sessionStorage only
    assert page.evaluate("sessionStorage.getItem('flexbin.apiKey')") == KEYS["alpha"]
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""


def test_upload_errors_are_the_servers(page, api) -> None:
    from playwright.sync_api import expect

    page.goto("/#/upload")
    bad_zip = b"this is not a zip archive"
    page.set_input_files("#dataset-form input[name=archive]",
                         files=[{"name": "bad.zip", "mimeType": "application/zip", "buffer": bad_zip}])
    page.click("#dataset-form button[type=submit]")
    expected = api.post("/datasets", files={"archive": ("bad.zip", bad_zip)}).json()["detail"]
    expect(page.locator("#dataset-form .error")).to_have_text(expected)

    weights, _ = tiny_model()
    bad_card = '{"architecture": "no_such_net", "num_classes": 2}'
    page.set_input_files("#model-form input[name=weights]",
                         files=[{"name": "w.safetensors", "mimeType": "application/octet-stream", "buffer": weights}])
    page.fill("#model-form textarea[name=card]", bad_card)
    page.click("#model-form button[type=submit]")
    expected = api.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": bad_card})
    assert expected.status_code == 422
    expect(page.locator("#model-form .error")).to_have_text(expected.json()["detail"])


def test_upload_model_and_dataset(page, api, artifacts, state) -> None:
    from playwright.sync_api import expect

    weights, card = upload_model()
    page.set_input_files("#model-form input[name=weights]",
                         files=[{"name": "w.safetensors", "mimeType": "application/octet-stream", "buffer": weights}])
    page.fill("#model-form textarea[name=card]", card)
    page.fill("#model-form input[name=name]", "pednet")
    page.click("#model-form button[type=submit]")
    expect(page.locator("#model-form .model-id")).to_be_visible()
    state["model_id"] = page.locator("#model-form .model-id").inner_text()
    assert api.get(f"/models/{state['model_id']}").json()["card"]["width"] == json.loads(card)["width"]

    page.set_input_files("#dataset-form input[name=archive]",
                         files=[{"name": "pf.zip", "mimeType": "application/zip", "buffer": dataset_zip(NUM_IMAGES)}])
    page.fill("#dataset-form input[name=name]", f"penn-fudan {NUM_IMAGES}")
    page.click("#dataset-form button[type=submit]")
    expect(page.locator("#dataset-form .dataset-id")).to_be_visible()
    state["dataset_id"] = page.locator("#dataset-form .dataset-id").inner_text()
    assert api.get(f"/datasets/{state['dataset_id']}").json()["num_images"] == NUM_IMAGES
    expect(page.locator("#model-form .error")).to_be_hidden()
    expect(page.locator("#arch-table tbody tr").first).to_be_visible()
    shot(page, artifacts, "upload")


def test_job_progress_and_steps_live(page, api, worker, artifacts, state) -> None:
    from playwright.sync_api import expect

    page.click("#nav a[data-route=jobs]")
    form = page.locator("#job-form")
    # the ids just uploaded are filled in
    expect(form.locator("input[name=model_id]")).to_have_value(state["model_id"])
    expect(form.locator("input[name=dataset_id]")).to_have_value(state["dataset_id"])
    form.locator("input[name=target_value]").fill(str(JOB["target"]["min_compression_ratio"]))
    form.locator("input[name=finetune_iters]").fill(str(JOB["finetune_iters"]))
    form.locator("input[name=batch_size]").fill(str(JOB["batch_size"]))
    form.locator("input[name=seed]").fill(str(JOB["seed"]))
    form.locator("input[name=iters_per_mac_percent]").fill("0")  # sent as given: 0 adds no iterations
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/#/job/*")
    job_id = page.url.rsplit("/", 1)[1]
    state["job_id"] = job_id

    # sample the page (no reload) while the job runs
    samples: list[tuple[float, int, float]] = []
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status = page.locator("#job-status").inner_text()
        percent = float(page.locator("#job-bar").get_attribute("data-percent") or 0)
        rows = count(page, "#steps-table tbody tr")
        step_percent = float(page.locator("#step-bar").get_attribute("data-percent") or 0)
        samples.append((percent, rows, step_percent))
        if status in {"succeeded", "failed", "cancelled"}:
            break
        if rows == 2 and "mid" not in state:
            state["mid"] = True
            shot(page, artifacts, "job-running")
        time.sleep(0.2)
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded", (job["error"], worker.tail())
    assert job["config"]["iters_per_mac_percent"] == 0 and job["config"]["finetune_iters"] == JOB["finetune_iters"]
    expect(page.locator("#job-status")).to_have_text("succeeded")
    percents = [p for p, _, _ in samples]
    assert percents == sorted(percents), "the job's progress bar went backwards"
    assert len({p for p in percents if 0 < p < 100}) >= 2, f"the progress bar did not advance: {percents}"
    assert percents[-1] == 100.0
    rows_seen = [r for _, r, _ in samples]
    assert rows_seen == sorted(rows_seen) and len(set(rows_seen)) >= 3, f"the step table did not fill: {rows_seen}"
    assert any(0 < s < 100 for _, _, s in samples), "the current-step bar never moved"

    # the step table: one row per committed step, with the API's numbers
    steps = job["steps"]
    expect(page.locator("#steps-table tbody tr")).to_have_count(len(steps))
    last = page.locator("#steps-table tbody tr").last
    assert last.get_attribute("data-checkpoint-id") == steps[-1]["checkpoint_id"]
    assert f"{steps[-1]['miss_rate']:.3f}" in last.inner_text()
    assert steps[-1]["layers"][0] in last.inner_text()
    selected_row = page.locator(f"#steps-table tr[data-checkpoint-id='{job['selected_checkpoint_id']}']")
    expect(selected_row.locator(".tag.selected")).to_have_count(1)

    # the trade-off plot: a point per step, the target line, the selected checkpoint ringed
    expect(page.locator("#tradeoff circle.pt-this")).to_have_count(len(steps))
    expect(page.locator("#tradeoff line.target")).to_have_count(1)
    expect(page.locator("#tradeoff circle.selected-ring")).to_have_count(1)
    # each step's measured OpenVINO latency: in the table, and as the plot's other x axis
    assert all(s["latency_ms"] for s in steps), "the worker measures every step's exported model"
    expect(last.locator("td.latency")).to_have_text(f"{steps[-1]['latency_ms']:.{1 if steps[-1]['latency_ms'] >= 10 else 2}f} ms")
    page.locator("#tradeoff-x button[data-x=latency_ms]").click()
    expect(page.locator("#tradeoff-title")).to_contain_text("latency")
    expect(page.locator("#tradeoff circle.pt-this")).to_have_count(len(steps))
    expect(page.locator("#tradeoff line.target")).to_have_count(0)  # a ratio target has no latency position
    xs = [float(c.get_attribute("cx")) for c in page.locator("#tradeoff circle.pt-this").all()]
    fastest = min(range(len(steps)), key=lambda i: steps[i]["latency_ms"])
    assert xs.index(min(xs)) == fastest, "the leftmost point is the fastest step"
    page.locator("#tradeoff-x button[data-x=compression_ratio]").click()
    expect(page.locator("#tradeoff line.target")).to_have_count(1)

    # the MR-FPPI curve of the selected checkpoint, with every point the API gives
    checkpoint = api.get(f"/checkpoints/{job['selected_checkpoint_id']}").json()
    curve = checkpoint["fppi_curve"]
    assert curve and all(len(p) == 2 for p in curve)
    expect(page.locator(f"#fppi g.series[data-checkpoint-id='{checkpoint['id']}']")).to_have_count(1)
    expect(page.locator("#fppi circle.fppi-pt")).to_have_count(len(curve))
    # choosing another checkpoint redraws it
    first = api.get(f"/checkpoints/{steps[0]['checkpoint_id']}").json()
    page.locator("#steps-table tbody tr").first.locator("button", has_text="Curve").click()
    expect(page.locator(f"#fppi g.series[data-checkpoint-id='{first['id']}']")).to_have_count(1)
    expect(page.locator("#fppi circle.fppi-pt")).to_have_count(len(first["fppi_curve"]))
    state["steps"] = steps
    state["selected"] = job["selected_checkpoint_id"]


def test_other_jobs_on_the_model_compared(page, api, state) -> None:
    from playwright.sync_api import expect

    r = api.post("/jobs", json={"model_id": state["model_id"], "dataset_id": state["dataset_id"],
                                "method": "all_at_once", **JOB, "finetune_iters": 5})
    assert r.status_code == 202, r.text
    other = r.json()["id"]
    wait_until(lambda: api.get(f"/jobs/{other}").json()["status"] in {"succeeded", "failed"}, JOB_TIMEOUT,
               "the all-at-once job")
    other_steps = api.get(f"/jobs/{other}").json()["steps"]
    assert other_steps
    # the open job page picks it up on its next poll
    expect(page.locator(f"#tradeoff g.series.other[data-job-id='{other}'] circle.pt-other")).to_have_count(
        len(other_steps), timeout=15_000)
    expect(page.locator("#tradeoff-legend")).to_contain_text(f"job {other[:8]}: all at once")


def test_deploy_and_download(page, api, artifacts, state) -> None:
    from playwright.sync_api import expect

    target = state["steps"][-1]["checkpoint_id"]
    row = page.locator(f"#steps-table tr[data-checkpoint-id='{target}']")
    row.locator("button[data-action=deploy]").click()
    expect(page.locator("#steps-message")).to_contain_text(f"{target[:8]} deployed")
    expect(row.locator(".tag.deployed")).to_have_count(1)
    assert api.get("/deployment").json()["checkpoint_id"] == target
    expect(page.locator("#deployed-badge")).to_have_text(f"deployed: {target[:8]}")

    with page.expect_download() as info:
        row.locator("button[data-action=download]").click()
    download = info.value
    assert download.suggested_filename.endswith(".safetensors")
    data = Path(download.path()).read_bytes()
    assert data == api.get(f"/checkpoints/{target}/download").content
    with page.expect_download() as info:
        row.locator("button[data-action=download-openvino]").click()
    assert info.value.suggested_filename.endswith("-openvino.zip")
    assert Path(info.value.path()).read_bytes()[:4] == b"PK\x03\x04"
    page.locator(f"#steps-table tr[data-checkpoint-id='{state['selected']}'] button", has_text="Curve").click()
    page.wait_for_timeout(300)
    shot(page, artifacts, "job")
    state["deployed"] = target


def test_jobs_list_live_and_cancel(page, api, artifacts, state) -> None:
    from playwright.sync_api import expect

    weights, card = tiny_model(seed=9)  # uploaded elsewhere (the API): the form suggests it from GET /models
    other = api.post("/models", files={"weights": ("w.safetensors", weights)},
                     data={"card": card, "name": "from the API"}).json()["id"]
    page.click("#nav a[data-route=jobs]")
    expect(page.locator(f"#known-models option[value='{other}']")).to_have_count(1)
    expect(page.locator(f"#known-models option[value='{other}']")).to_have_text("from the API")
    long = {"model_id": state["model_id"], "dataset_id": state["dataset_id"],
            "target": {"max_miss_rate_increase": 0.5}, "finetune_iters": 100_000, "batch_size": 2}
    job_id = api.post("/jobs", json=long).json()["id"]
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    # it shows up and starts running without a reload
    expect(row).to_have_attribute("data-status", "running", timeout=30_000)
    expect(row.locator(".bar-caption")).to_contain_text("ETA", timeout=15_000)
    done = page.locator(f"#jobs-table tr[data-job-id='{state['job_id']}']")
    expect(done).to_have_attribute("data-status", "succeeded")
    assert "pednet" in done.inner_text() and f"penn-fudan {NUM_IMAGES}" in done.inner_text()
    expect(done.locator(".progress")).to_have_attribute("data-percent", "100.0")
    shot(page, artifacts, "jobs")
    row.locator("button", has_text="Cancel").click()
    expect(row).to_have_attribute("data-status", "cancelled", timeout=30_000)
    assert api.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_try_it_draws_boxes(page, api, artifacts, state) -> None:
    from playwright.sync_api import expect

    image = IMAGE.read_bytes()
    # a threshold that keeps the model's five best boxes (the tiny one is untrained)
    best = api.post("/detect", files={"images": ("p.png", image, "image/png")}, data={"score_threshold": "0"})
    scores = [d["score"] for d in best.json()["results"][0]["detections"]]
    assert scores, best.text
    threshold = math.floor(scores[min(4, len(scores) - 1)] * 1000) / 1000
    expected = api.post("/detect", files={"images": ("p.png", image, "image/png")},
                        data={"score_threshold": f"{threshold}"}).json()

    page.click("#nav a[data-route=tryit]")
    form = page.locator("#detect-form")
    expect(form.locator("select[name=checkpoint_id] option").first).to_contain_text(state["deployed"][:8])
    form.locator("input[name=image]").set_input_files(str(IMAGE))
    form.locator("input[name=score_threshold]").fill(f"{threshold}")
    form.locator("button[type=submit]").click()
    canvas = page.locator("#detect-canvas")
    expect(canvas).to_have_attribute("data-checkpoint-id", state["deployed"])
    n = len(expected["results"][0]["detections"])
    assert n >= 1
    expect(canvas).to_have_attribute("data-boxes", str(n))
    expect(page.locator("#detect-list li")).to_have_count(n)
    # boxes are really drawn: the canvas has box-coloured pixels (not only the photo)
    drawn = page.evaluate("""() => {
        const c = document.querySelector('#detect-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let hits = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 0x25 && d[i+1] === 0x63 && d[i+2] === 0xeb) hits++;
        return hits;
    }""")
    assert drawn > 50, "no box outline on the canvas"
    shot(page, artifacts, "tryit")

    # a chosen checkpoint instead of the deployed one
    float_step = state["steps"][0]["checkpoint_id"]
    form.locator("select[name=checkpoint_id]").select_option(float_step)
    form.locator("button[type=submit]").click()
    expect(canvas).to_have_attribute("data-checkpoint-id", float_step)


def test_an_int8_job_shows_and_plots_its_int8_files(page, export_api_url: str, state) -> None:
    """A job with deploy_format openvino-int8 (taken by an API with the per-step export on): each
    row shows the int8 file's MR^-2 and latency beside the figures as trained, and the plot draws
    the int8 files, which its target judged."""
    from playwright.sync_api import expect

    with httpx.Client(base_url=export_api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=120) as c:
        r = c.post("/jobs", json={"model_id": state["model_id"], "dataset_id": state["dataset_id"],
                                  "target": {"max_latency_ms": 0.001}, "finetune_iters": 2, "batch_size": 2,
                                  "activation_bits": 1, "layers_per_step": 4, "deploy_format": "openvino-int8",
                                  "int8_after_1bit": "auto"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_until(lambda: c.get(f"/jobs/{job_id}").json()["status"] in {"succeeded", "failed"}, JOB_TIMEOUT,
                   "the int8 job")
        job = c.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    steps = job["steps"]
    assert all(st["int8"] for st in steps)
    # "auto": both files made each step, the one kept named, the other's figures reported beside it
    assert all(sorted(v["kept"] for v in st["int8"]["variants"]) == [False, True] for st in steps)
    page.goto(f"/#/job/{job_id}")
    expect(page.locator("#job-summary")).to_contain_text("judged on its openvino-int8 files")
    rows = page.locator("#steps-table tbody tr")
    expect(rows).to_have_count(len(steps))
    for row, st in zip(rows.all(), steps):
        expect(row.locator("td.miss-rate")).to_contain_text(f"int8 {st['int8']['miss_rate']:.3f}")
        expect(row.locator("td.latency .int8")).to_have_count(1)
        expect(row.locator("td.miss-rate .int8")).to_have_attribute("title", re.compile("kept for its MR⁻² on the training"))
    # a latency target nothing meets: the fastest int8 file is selected, and the plot is drawn in int8 times
    fastest = min(steps, key=lambda st: st["int8"]["latency_ms"])
    assert job["selected_checkpoint_id"] == fastest["checkpoint_id"]
    page.locator("#tradeoff-x button[data-x=latency_ms]").click()
    expect(page.locator("#tradeoff-title")).to_contain_text("int8 files")
    expect(page.locator("#tradeoff circle.pt-this")).to_have_count(len(steps))
    xs = [float(c.get_attribute("cx")) for c in page.locator("#tradeoff circle.pt-this").all()]
    assert xs.index(min(xs)) == steps.index(fastest), "the leftmost point is the fastest int8 file"
    page.locator("#tradeoff-x button[data-x=compression_ratio]").click()


def test_sign_out_forgets_the_key(page) -> None:
    from playwright.sync_api import expect

    page.click("#signout")
    expect(page.locator("#page-signin")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('flexbin.apiKey')") is None
