"""Reliability benchmark: what the hardening tests saw, and `/detect` under load while a job runs.

    python -m bench.reliability                # make bench-reliability (tests, then the load)
    python -m bench.reliability --skip-tests   # the load part only
    python -m bench.reliability --only-tests   # the tests only
    python -m bench.reliability --seconds 10 --clients 4   # a short load, to check the script

1. The tests. Runs pytest (a subprocess, `OMP_NUM_THREADS=1`) on the reliability tests that
   exist - schema fuzzing, hostile uploads, tenant isolation, fault injection, rate limits -
   with `FLEXBIN_RELIABILITY_DIR` set: each test writes the figures it saw through the
   `record_figures` fixture (tests/conftest.py) as `<section>.json` there, and asserts on them
   itself. pytest's JUnit XML gives each test's outcome and duration. A section whose test
   did not run, or failed before reporting, is reported as such, never as a number.
2. The load. Its own stack on this machine (a fresh PostgreSQL database, a Redis DB, the API
   and one worker process, as `bench.jobs`): uploads FlexBin's default PedNet (untrained:
   the serving cost is the point, not its boxes) and a Penn-Fudan dataset, deploys a packed
   checkpoint of it made by a job, then starts a binarization job on the worker and, while it
   runs, `--clients` concurrent clients post one Penn-Fudan image per `/detect` request for
   `--seconds`, and one poller reads `GET /jobs/{id}` every 0.5 s. When a job ends before
   the window does, the next one starts. Every request has a timeout; every wait is bounded.

Writes bench/results/reliability.json and reliability.md: one row per figure group, with its
goal and whether the measured figures meet it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import report, stack
from core.paths import default_data_dir

# The tests `bench.reliability` runs: the ones that exist when it runs.
TEST_FILES = {
    "fuzz": "tests/integration/test_fuzz.py",
    "hostile": "tests/integration/test_hostile_uploads.py",
    "isolation": "tests/integration/test_isolation.py",
    "faults": "tests/integration/test_faults.py",
    "ratelimit": "tests/integration/test_ratelimit.py",
}
PEDNET_CARD = {"architecture": "flexbin_pednet", "num_classes": 2}  # the default detector, default input size
POLL_INTERVAL_S = 0.5
JOBS_P99_GOAL_MS = 1000.0


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="flexbin-reliability-"))
    previous = (report.load_results("reliability") or {}) if args.reuse_previous else {}
    reused = []
    tests = None
    if not args.skip_tests:
        tests = run_tests(args.tests_timeout, log_dir)
    elif previous.get("tests") is not None:
        tests = previous["tests"]
        reused.append(f"the tests ({_when(previous)})")
    load = None
    if not args.only_tests:
        load = run_load(args, log_dir)
    elif previous.get("load") is not None:
        load = previous["load"]
        reused.append(f"the load ({_when(previous)})")
    rows = [*rows_from_tests(tests, "not run (--skip-tests)"), *load_rows(load, "not run (--only-tests)")]
    result = {
        "git": report.git_commit(),
        "machine": report.machine(),
        "total_seconds": round(time.monotonic() - started, 1),
        "rows": [r.__dict__ for r in rows],
        "tests": tests,
        "load": load,
        "reused": "; ".join(reused) or None,
        "logs": str(log_dir),
    }
    report.write_results("reliability", result, markdown(result))
    print("\n" + "\n".join(table(result["rows"])))
    print(f"\nwrote {report.RESULTS / 'reliability.json'} and {report.RESULTS / 'reliability.md'} (logs in {log_dir})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--skip-tests", action="store_true", help="run the load part only")
    parts.add_argument("--only-tests", action="store_true", help="run the tests only")
    parser.add_argument("--reuse-previous", action="store_true",
                        help="with --skip-tests / --only-tests: keep the other part from the existing "
                             "bench/results/reliability.json instead of reporting it as not run")
    parser.add_argument("--seconds", type=float, default=60.0, help="load window (default 60)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent /detect clients (default 16)")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="per request, seconds (default 30)")
    parser.add_argument("--finetune-iters", type=int, default=120,
                        help="fine-tuning iterations per step of the job that runs during the load (default "
                             "120: about 2-3 minutes per job on 2 busy cores, more than the window)")
    parser.add_argument("--dataset-images", type=int, default=24)
    parser.add_argument("--tests-timeout", type=float, default=3600.0, help="bound on the whole pytest run")
    return parser.parse_args()


def _when(previous: dict[str, Any]) -> str:
    return f"{previous['machine']['date']}, commit {(previous['git']['commit'] or '?')[:10]}"


# -- 1. the tests ---------------------------------------------------------------------------
def junit_cases(path: Path) -> list[dict[str, Any]]:
    """[{nodeid, file, outcome, seconds, message}] from pytest's JUnit XML."""
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        classname, name = tc.get("classname", ""), tc.get("name", "")
        parts = classname.split(".") if classname else name.split(".")
        file = next((("/".join(parts[:i]) + ".py") for i in range(len(parts), 0, -1)
                     if (report.ROOT / ("/".join(parts[:i]) + ".py")).is_file()), classname)
        inner = "::".join(parts[len(Path(file).with_suffix("").parts):]) if classname else ""
        nodeid = "::".join(p for p in (file, inner, name if classname else "") if p)
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = tc.find(kind)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (found.get("message") or "")[:300]
                if kind != "skipped":
                    break
        cases.append({"nodeid": nodeid, "file": file, "outcome": outcome,
                      "seconds": round(float(tc.get("time") or 0), 1), "message": message})
    return cases


def run_tests(timeout: float, log_dir: Path) -> dict[str, Any]:
    files = {area: f for area, f in TEST_FILES.items() if (report.ROOT / f).is_file()}
    out = {"files": {area: {"file": f, "exists": (report.ROOT / f).is_file()} for area, f in TEST_FILES.items()},
           "sections": {}, "cases": [], "exit_code": None, "seconds": 0.0, "timed_out": False}
    if not files:
        return out
    figures_dir = Path(tempfile.mkdtemp(prefix="flexbin-reliability-figures-"))
    junit = log_dir / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--junitxml={junit}", "-o", "junit_family=xunit2", *files.values()]
    out["command"] = " ".join(["python", *argv[1:-len(files)], *files.values()]).replace(str(junit), "<junit.xml>")
    report.log(f"running the tests: {' '.join(files.values())} (log: {log_dir / 'pytest.log'})")
    started = time.monotonic()
    out["exit_code"], out["timed_out"] = run_pytest(argv, {**os.environ, "FLEXBIN_RELIABILITY_DIR": str(figures_dir),
                                                           "OMP_NUM_THREADS": "1"}, log_dir / "pytest.log", timeout)
    out["seconds"] = round(time.monotonic() - started, 1)
    print("\n".join((log_dir / "pytest.log").read_text(errors="replace").splitlines()[-15:]), flush=True)
    if junit.is_file():
        out["cases"] = junit_cases(junit)
    for path in sorted(figures_dir.glob("*.json")):
        data = json.loads(path.read_text())
        out["sections"][data["section"]] = {"test": data["test"], "figures": data["figures"]}
    shutil.rmtree(figures_dir, ignore_errors=True)
    return out


def run_pytest(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> tuple[int | None, bool]:
    """(exit code, timed out) of pytest in its own process group, its output in `log_path`."""
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, cwd=report.ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            return proc.returncode, True


# -- 2. the load ----------------------------------------------------------------------------
class JobKeeper:
    """Keeps one binarization job running through the window, polling `GET /jobs/{id}` every
    POLL_INTERVAL_S; when the job ends while the window is open, starts the next one."""

    def __init__(self, client: httpx.Client, body: dict[str, Any]) -> None:
        self.client, self.body = client, body
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.jobs: list[str] = []
        self.seen: dict[str, dict[str, Any]] = {}  # job id -> its last summary
        self.stop_at = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start_job(self) -> str:
        r = self.client.post("/jobs", json=self.body)
        r.raise_for_status()
        self.jobs.append(r.json()["id"])
        return self.jobs[-1]

    def get(self) -> dict[str, Any] | None:
        t0 = time.perf_counter()
        try:
            r = self.client.get(f"/jobs/{self.jobs[-1]}")
        except httpx.HTTPError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        self.latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            self.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            return None
        body = r.json()
        self.seen[body["id"]] = summary(body)
        return body

    def wait_running(self, timeout: float) -> dict[str, Any]:
        """The current job once a worker runs it and it has committed step 0."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.get()
            if body is not None:
                if body["status"] in stack.TERMINAL:
                    raise RuntimeError(f"the load job ended before the load: {body['status']} {body['error']}")
                if body["status"] == "running" and body["steps"]:
                    self.latencies.clear()
                    self.errors.clear()
                    return body
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"the load job did not run within {timeout:.0f} s")

    def run_until(self, seconds: float) -> None:
        self.stop_at = time.monotonic() + seconds
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while time.monotonic() < self.stop_at:
            t0 = time.monotonic()
            body = self.get()
            if body is not None and body["status"] in stack.TERMINAL and time.monotonic() < self.stop_at - 5:
                try:
                    self.start_job()
                except httpx.HTTPError as exc:
                    self.errors.append(f"POST /jobs: {exc}")
            time.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - t0)))


def summary(job: dict[str, Any]) -> dict[str, Any]:
    p = job["progress"]
    return {"id": job["id"], "status": job["status"], "steps_committed": len(job["steps"]),
            "progress_step": p["step"], "total_steps": p["total_steps"], "percent": p["percent"],
            "progress_updated_at": p.get("updated_at"), "error": job.get("error")}


@dataclass
class Window:
    """What the load window saw."""

    body: dict[str, Any]
    keeper: JobKeeper
    before: dict[str, Any]
    detect: dict[str, Any]
    mean_batch_size: float | None
    jobs_poll: list[float]
    poll_errors: list[str]
    seconds: float


def run_load(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    root = default_data_dir()
    images = [(p.name, p.read_bytes()) for p in sorted((root / "PNGImages").glob("*.png"))]
    if not images:
        raise SystemExit(f"no Penn-Fudan images under {root}")
    started = time.monotonic()
    with stack.postgres_stack("flexbin_reliability", FLEXBIN_PROGRESS_INTERVAL_SECONDS="1") as (_, env):
        procs: list[stack.Proc] = []
        try:
            api, url = stack.start_api(env, log_dir)
            procs.append(api)
            procs.append(stack.start_worker({**env, "OMP_NUM_THREADS": "1", "FLEXBIN_TORCH_THREADS": "1",
                                             "FLEXBIN_LOG_LEVEL": "INFO"}, log_dir, "worker"))
            with stack.client(url, args.request_timeout) as c:
                weights, card = stack.tiny_model(PEDNET_CARD)
                ids = stack.upload(c, weights, card, args.dataset_images)
                checkpoint = deploy_checkpoint(c, ids)
                stack.run_clients(url, images, 2, 2.0, timeout=args.request_timeout)  # warm-up, not counted
                window = load_window(c, url, ids, images, args)
        finally:
            for proc in reversed(procs):
                proc.stop()
    return load_result(args, len(images), len(weights), checkpoint, window, time.monotonic() - started)


def deploy_checkpoint(c: httpx.Client, ids: dict[str, str]) -> dict[str, Any]:
    """A packed checkpoint to serve, made the way every checkpoint is (by a job, here without
    fine-tuning), deployed and loaded."""
    report.log("making a checkpoint to serve (a job without fine-tuning) ...")
    r = c.post("/jobs", json={**ids, "target": {"min_compression_ratio": 1.5}, "finetune_iters": 0, "batch_size": 2})
    r.raise_for_status()
    made = stack.wait_until(lambda: (j := c.get(f"/jobs/{r.json()['id']}").json())["status"] in stack.TERMINAL
                            and j, 900, "the job making the checkpoint", interval=1.0)
    assert isinstance(made, dict)
    if made["status"] != "succeeded":
        raise RuntimeError(f"the checkpoint job {made['status']}: {made['error']}")
    checkpoint: dict[str, Any] = c.get(f"/checkpoints/{made['selected_checkpoint_id']}").json()
    c.put("/deployment", json={"checkpoint_id": checkpoint["id"]}).raise_for_status()
    stack.wait_until(lambda: c.get("/readyz").status_code == 200, 300, "/readyz after the deployment")
    return checkpoint


def load_window(c: httpx.Client, url: str, ids: dict[str, str], images: list[tuple[str, bytes]],
                args: argparse.Namespace) -> Window:
    """`/detect` clients for the window while a job runs on the worker (every eligible layer:
    32x is more than binarizing all of them gives) and a poller reads it."""
    body = {**ids, "target": {"min_compression_ratio": 32.0}, "finetune_iters": args.finetune_iters, "batch_size": 4}
    keeper = JobKeeper(c, body)
    keeper.start_job()
    before = summary(keeper.wait_running(600))
    batches_before = stack.batch_sizes(url)
    report.log(f"load: {args.clients} clients x {args.seconds:.0f} s on /detect while job {before['id']} runs "
               f"(step {before['progress_step']}/{before['total_steps']}) ...")
    keeper.run_until(args.seconds)
    window_started = time.monotonic()
    detect = stack.run_clients(url, images, args.clients, args.seconds, timeout=args.request_timeout)
    keeper.join(timeout=args.request_timeout + 5)
    seconds = time.monotonic() - window_started
    mean_batch = stack.mean_batch_size(batches_before, stack.batch_sizes(url))
    jobs_poll, poll_errors = list(keeper.latencies), list(keeper.errors)
    keeper.get()  # the last job's state at the end of the window (not counted above)
    for job_id in keeper.jobs:  # leave nothing running
        c.post(f"/jobs/{job_id}/cancel")
    return Window(body, keeper, before, detect, mean_batch, jobs_poll, poll_errors, seconds)


def load_result(args: argparse.Namespace, images: int, weights_bytes: int, checkpoint: dict[str, Any],
                w: Window, seconds: float) -> dict[str, Any]:
    ms = [x * 1000 for x in w.jobs_poll]
    seen, jobs, before = w.keeper.seen, w.keeper.jobs, w.before
    after = seen[jobs[-1]]
    return {
        "config": {"clients": args.clients, "seconds": args.seconds, "request_timeout_s": args.request_timeout,
                   "images": images, "image_source": f"Penn-Fudan PNGImages ({images} PNGs, one per request)",
                   "poll_interval_s": POLL_INTERVAL_S, "model_card": PEDNET_CARD,
                   "model": "FlexBin PedNet, default architecture and input size, untrained weights",
                   "model_weights_bytes": weights_bytes,
                   "job_body": {k: v for k, v in w.body.items() if not k.endswith("_id")},
                   "dataset_images": args.dataset_images, "worker_torch_threads": 1},
        "served_checkpoint": {"id": checkpoint["id"], "compression_ratio": checkpoint["compression_ratio"],
                              "binary_layers": len(checkpoint["binary_layers"]), "size_bytes": checkpoint["size_bytes"]},
        "detect": {**{k: v for k, v in w.detect.items() if k != "images"},
                   "requests": w.detect["images"] + w.detect["errors"], "ok": w.detect["images"],
                   "mean_batch_size": w.mean_batch_size},
        "jobs_poll": {"requests": len(ms) + len(w.poll_errors), "errors": len(w.poll_errors),
                      "error_examples": w.poll_errors[:3], "p50_ms": round(stack.pct(ms, 50), 1),
                      "p99_ms": round(stack.pct(ms, 99), 1), "max_ms": round(max(ms, default=float("nan")), 1)},
        "job": {"at_start": before, "at_end": after, "jobs": [seen[i] for i in jobs],
                "jobs_started_in_window": len(jobs) - 1,
                "steps_committed_in_window": sum(seen[i]["steps_committed"] for i in jobs) - before["steps_committed"],
                "percent_gained": round(after["percent"] - before["percent"], 1) if after["id"] == before["id"] else None,
                "running_at_end": after["status"] == "running"},
        "window_seconds": round(w.seconds, 1),
        "seconds": round(seconds, 1),
    }


# -- the table ------------------------------------------------------------------------------
@dataclass
class Row:
    area: str
    source: str
    measured: str
    goal: str
    met: str  # "yes", "no", "not run", "unknown"


def _outcomes(cases: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for case in cases:
        out[case["outcome"]] = out.get(case["outcome"], 0) + 1
    return out


def _tests_text(cases: list[dict[str, Any]]) -> str:
    counts = _outcomes(cases)
    passed = counts.get("passed", 0)
    bad = {k: v for k, v in counts.items() if k not in ("passed", "skipped")}
    text = f"{passed}/{len(cases) - counts.get('skipped', 0)} tests passed"
    if bad:
        text += " (" + ", ".join(f"{v} {k}" for k, v in sorted(bad.items())) + ")"
    return text


def _cases_ok(cases: list[dict[str, Any]]) -> bool:
    return bool(cases) and all(c["outcome"] in ("passed", "skipped") for c in cases) and any(
        c["outcome"] == "passed" for c in cases)


class Figures:
    """A section's figures: `f["x"]` formats a reported value; a missing one reads "?", is
    listed in `missing` and makes the goal unknown (never a made-up number)."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures
        self.missing: list[str] = []

    def __getitem__(self, key: str) -> str:
        if key not in self.figures:
            self.missing.append(key)
            return "?"
        value = self.figures[key]
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    def num(self, key: str) -> float:
        value = self.figures.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.missing.append(key)
            return float("nan")
        return float(value)


def _jobs_clean(f: Figures) -> bool:
    jobs = f.num("jobs")
    return (jobs > 0 and f.num("succeeded") == jobs and f.num("steps_duplicated") == 0 and f.num("steps_lost") == 0
            and ("matching_reference" not in f.figures or f.num("matching_reference") == jobs))


SectionSpec = tuple[str, str, Callable[[Figures], str], str, Callable[[Figures], bool]]


def _restart_section(section: str, area: str, request: str) -> SectionSpec:
    """A server restarted mid-job; `request` ("POST /jobs", "GET /jobs/{id}") was sent while it was down."""
    key = request.split()[0].lower()  # the figures' prefix: post_while_down_*, get_while_down_*

    def measured(f: Figures) -> str:
        return (f"{f['restarts']} restart: {f['succeeded']} of {f['jobs']} jobs succeeded; steps duplicated "
                f"{f['steps_duplicated']}, lost {f['steps_lost']}; {request} while down: "
                f"{f[f'{key}_while_down_status']} in {f[f'{key}_while_down_seconds']} s")

    return section, area, measured, "the job resumes and succeeds; 0 steps duplicated or lost", _jobs_clean

SECTIONS: list[SectionSpec] = [
    # (section, area, measured, goal, check)
    ("fuzz.schema", "Schema fuzzing (schemathesis)",
     lambda f: (f"{f['requests']} generated requests over {f['operations']} operations: {f['server_errors']} 5xx, "
                f"{f['schema_violations']} responses violating the schema"),
     "0 5xx, 0 schema violations",
     lambda f: f.num("server_errors") == 0 and f.num("schema_violations") == 0 and f.num("requests") > 0),
    ("hostile.uploads", "Hostile uploads",
     lambda f: (f"{f['files_tried']} hostile files tried, {f['files_rejected']} rejected with a 4xx "
                f"({f['requests']} requests: {f['server_errors']} 5xx, {f['accepted']} accepted); database "
                f"changed after {f['database_changed']}, disk after {f['disk_changed']}; API peak memory "
                f"+{f['api_peak_growth_mib']} MiB over {f['api_rss_before_mib']} MiB"),
     "every file rejected with a 4xx; 0 5xx; database and disk unchanged; API peak memory +256 MiB at most",
     lambda f: (f.num("files_tried") > 0 and f.num("files_rejected") == f.num("files_tried")
                and f.num("server_errors") == 0 and f.num("accepted") == 0
                and f.num("database_changed") == 0 and f.num("disk_changed") == 0
                and f.num("api_peak_growth_mib") <= f.num("max_memory_growth_mib"))),
    ("faults.sigkill", "Faults: worker SIGKILL at random moments",
     lambda f: (f"{f['runs']} runs, {f['kills']} kills ({f['kills_mid_job']} mid-job): {f['succeeded']} of "
                f"{f['jobs']} jobs succeeded, {f['matching_reference']} match the fault-free run; steps "
                f"duplicated {f['steps_duplicated']}, lost {f['steps_lost']}; {f['checksums_verified']} "
                "checksums verified"),
     "every job succeeds with the fault-free result; 0 steps duplicated or lost",
     _jobs_clean),
    ("faults.drain", "Faults: workers killed while a queue drains",
     lambda f: (f"{f['kills']} kills: {f['succeeded']} of {f['jobs']} jobs succeeded, {f['matching_reference']} "
                f"match the fault-free run; steps duplicated {f['steps_duplicated']}, lost {f['steps_lost']}"),
     "every job succeeds with the fault-free result; 0 steps duplicated or lost",
     _jobs_clean),
    _restart_section("faults.redis_restart", "Faults: Redis restart mid-job", "POST /jobs"),
    _restart_section("faults.postgres_restart", "Faults: PostgreSQL restart mid-job", "GET /jobs/{id}"),
    ("faults.unsent_message", "Faults: a job whose message was never sent (API died in between)",
     lambda f: (f"{f['succeeded']} of {f['jobs']} jobs succeeded, {f['matching_reference']} match the fault-free "
                f"run; steps duplicated {f['steps_duplicated']}, lost {f['steps_lost']}"),
     "a worker sends it and the job succeeds; 0 steps duplicated or lost",
     _jobs_clean),
]


def _generic(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items() if not isinstance(v, dict | list))


FAULT_TOTAL = "Steps duplicated or lost, all fault runs"


def rows_from_tests(tests: dict[str, Any] | None, why_not: str) -> list[Row]:
    if tests is None:
        return [*(Row(area, "-", why_not, goal, "not run") for _section, area, _m, goal, _c in SECTIONS),
                Row(FAULT_TOTAL, "-", why_not, "0", "not run"),
                *(Row(title, TEST_FILES[area], why_not, "every test passes", "not run")
                  for area, title in _AREA_TITLES.items())]
    return [*(section_row(tests, spec) for spec in SECTIONS), faults_row(tests["sections"]),
            *unlisted_rows(tests), *(area_row(tests, area) for area in _AREA_TITLES)]


def not_run(tests: dict[str, Any], area: str) -> str | None:
    """Why a test file gave nothing, if it did not run at all."""
    file = TEST_FILES[area]
    if not tests["files"][area]["exists"]:
        return f"not run: {file} does not exist"
    if not any(c["file"] == file for c in tests["cases"]):
        return "not run: no test of this file ran"
    return None


def section_row(tests: dict[str, Any], spec: SectionSpec) -> Row:
    """A section's row: its figures against its goal, or why there are none."""
    section, area, measured, goal, check = spec
    file = TEST_FILES[section.split(".")[0]]
    if section not in tests["sections"]:
        reason = not_run(tests, section.split(".")[0])
        if reason:
            return Row(area, f"`{Path(file).name}`", reason, goal, "not run")
        in_file = [c for c in tests["cases"] if c["file"] == file]
        failed = [c for c in in_file if c["outcome"] in ("failed", "error")]
        what = (f"no figures: its test did not run or failed before reporting ({Path(file).name}: "
                f"{_tests_text(in_file)}" + "".join(f"; {c['nodeid'].split('::')[-1]} {c['outcome']}"
                                                    for c in failed[:3]) + ")")
        return Row(area, f"`{Path(file).name}`", what, goal, "unknown" if failed else "not run")
    data = tests["sections"][section]
    own = [c for c in tests["cases"] if c["nodeid"] == data["test"]]
    f = Figures(data["figures"])
    text, ok = measured(f), check(f)
    if f.missing:
        text += f" (not reported: {', '.join(sorted(set(f.missing)))})"
    if own and not _cases_ok(own):
        met, text = "no", text + f"; the test {own[0]['outcome']}"
    elif f.missing or not own:
        met = "unknown" if f.missing else "unknown (test outcome not found)"
    else:
        met = "yes" if ok else "no"
    return Row(area, f"`{data['test'].split('/')[-1]}`", text, goal, met)


def faults_row(sections: dict[str, Any]) -> Row:
    """Steps duplicated or lost over every fault scenario that reported."""
    expected = [name for name, *_ in SECTIONS if name.startswith("faults.")]
    faults = {k: Figures(v["figures"]) for k, v in sections.items() if k.startswith("faults.")}
    if not faults:
        return Row(FAULT_TOTAL, "`test_faults.py`", "no fault scenario reported", "0 and 0", "not run")
    dup = sum(f.num("steps_duplicated") for f in faults.values())
    lost = sum(f.num("steps_lost") for f in faults.values())
    jobs = sum(f.num("jobs") for f in faults.values())
    missing = any(f.missing for f in faults.values())
    absent = [name for name in expected if name not in faults]
    text = (f"{dup:.0f} duplicated, {lost:.0f} lost over {jobs:.0f} faulted jobs in {len(faults)} scenarios"
            if not missing else "a scenario did not report its steps")
    if absent:
        text += f" (not reported: {', '.join(absent)})"
    met = "unknown" if missing or absent else ("yes" if dup == 0 and lost == 0 else "no")
    return Row(FAULT_TOTAL, "`test_faults.py`", text, "0 and 0", met)


def unlisted_rows(tests: dict[str, Any]) -> list[Row]:
    """Sections this module has no row for: shown as reported."""
    known = {name for name, *_ in SECTIONS}
    rows = []
    for name, data in tests["sections"].items():
        if name in known or name.split(".")[0] in _AREA_TITLES:
            continue
        own = [c for c in tests["cases"] if c["nodeid"] == data["test"]]
        rows.append(Row(name, f"`{data['test'].split('/')[-1]}`", _generic(data["figures"]) or "-",
                        "its test passes", "yes" if _cases_ok(own) else "no"))
    return rows


def area_row(tests: dict[str, Any], area: str) -> Row:
    """A whole test file's row (tenant isolation, rate limits): every test passes."""
    file = TEST_FILES[area]
    reason = not_run(tests, area)
    if reason:
        return Row(_AREA_TITLES[area], f"`{Path(file).name}`", reason, "every test passes", "not run")
    in_file = [c for c in tests["cases"] if c["file"] == file]
    text = _tests_text(in_file) + "".join(f"; {name}: {_generic(data['figures'])}"
                                          for name, data in tests["sections"].items() if name.split(".")[0] == area)
    return Row(_AREA_TITLES[area], f"`{Path(file).name}`", text, "every test passes",
               "yes" if _cases_ok(in_file) else "no")


_AREA_TITLES = {"isolation": "Tenant isolation", "ratelimit": "Rate limits per API key"}


def load_rows(load: dict[str, Any] | None, why_not: str) -> list[Row]:
    goals = ("0 errors (non-200 or transport)", f"0 errors, p99 <= {JOBS_P99_GOAL_MS:.0f} ms",
             "the job commits steps or advances during the window")
    areas = ("Load: `/detect` while a job runs", "Load: `GET /jobs/{id}` during the load",
             "Load: the job during the load")
    if load is None:
        return [Row(a, "`reliability.py`", why_not, g, "not run") for a, g in zip(areas, goals, strict=True)]
    d, p, j, cfg = load["detect"], load["jobs_poll"], load["job"], load["config"]
    progressed = j["steps_committed_in_window"] > 0 or (j["percent_gained"] or 0) > 0
    start, end = j["at_start"], j["at_end"]
    if start["id"] == end["id"]:
        job_text = f"progress {start['percent']:.1f} % -> {end['percent']:.1f} %, job {end['status']} at the end"
    else:
        first = j["jobs"][0]
        more = j["jobs_started_in_window"]
        job_text = (f"the job went from {start['percent']:.1f} % to {first['status']}, then "
                    f"{more} more job{'s' if more != 1 else ''} started; the last at {end['percent']:.1f} %, "
                    f"{end['status']} at the end")
    return [
        Row(areas[0], "`reliability.py`",
            (f"{cfg['clients']} clients x {d['seconds']:.0f} s: {d['requests']:,} requests, {d['errors']} errors, "
             f"{d['images_per_s']} img/s; latency p50 {d['p50_ms']:.0f} / p95 {d['p95_ms']:.0f} / "
             f"p99 {d['p99_ms']:.0f} / max {d['max_ms']:.0f} ms"),
            goals[0], "yes" if d["errors"] == 0 and d["requests"] > 0 else "no"),
        Row(areas[1], "`reliability.py`",
            (f"every {cfg['poll_interval_s']} s: {p['requests']} requests, {p['errors']} errors; latency "
             f"p50 {p['p50_ms']:.0f} / p99 {p['p99_ms']:.0f} / max {p['max_ms']:.0f} ms"),
            goals[1], "yes" if p["errors"] == 0 and p["requests"] > 0 and p["p99_ms"] <= JOBS_P99_GOAL_MS else "no"),
        Row(areas[2], "`reliability.py`",
            f"{j['steps_committed_in_window']} steps committed in the window; {job_text}",
            goals[2], "yes" if progressed else "no"),
    ]


# -- output ---------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]]) -> list[str]:
    return report.markdown_table(rows, [("area", "area"), ("source", "source"), ("measured", "measured"), ("goal", "goal"),
                                        ("met", lambda r: {"yes": "yes", "no": "**no**"}.get(r["met"], r["met"]))])


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Reliability (`python -m bench.reliability`)", "",
        (f"{result['machine']['date']}, commit {report.commit_text(result['git'])}; {report.machine_text(result['machine'])}. "
         f"Total run time {result['total_seconds']:.0f} s."), "",
        *table(result["rows"]), "",
    ]
    tests = result["tests"]
    if tests is not None:
        lines += [
            (f"Tests: `{tests.get('command', '')}` with `FLEXBIN_RELIABILITY_DIR` set, {tests['seconds']:.0f} s, "
             f"exit code {tests['exit_code']}" + (" (timed out)" if tests["timed_out"] else "") + "; "
             + _tests_text(tests["cases"]) + ". Per file:"), "",
            *(f"- `{info['file']}`: does not exist (not run)" if not info["exists"] else
              f"- `{info['file']}`: {_tests_text(in_file)} in {sum(c['seconds'] for c in in_file):.0f} s"
              for info in tests["files"].values()
              for in_file in ([c for c in tests["cases"] if c["file"] == info["file"]],)), "",
        ]
    if result["load"] is not None:
        lines += [_load_text(result["load"]), ""]
    if result.get("reused"):
        lines += [f"Reused from an earlier run: {result['reused']}.", ""]
    return "\n".join(lines)


def _load_text(load: dict[str, Any]) -> str:
    cfg, ck, d, j = load["config"], load["served_checkpoint"], load["detect"], load["job"]
    return (f"Load: its own stack (fresh PostgreSQL database, Redis DB, the API and one worker with 1 torch "
            f"thread) on this machine. Served: a packed checkpoint of FlexBin's default PedNet (untrained "
            f"weights, {cfg['model_weights_bytes']:,} bytes of float weights; the checkpoint has "
            f"{ck['binary_layers']} binary layers, {ck['size_bytes']:,} bytes). {cfg['clients']} clients "
            f"each post one of {cfg['images']} Penn-Fudan PNGs per `/detect` request for {cfg['seconds']:.0f} s "
            f"(timeout {cfg['request_timeout_s']:.0f} s per request; mean micro-batch {d['mean_batch_size']}), "
            f"while job `{j['at_start']['id']}` ({cfg['job_body']['finetune_iters']} fine-tuning iterations per "
            f"step, batch {cfg['job_body']['batch_size']}, {cfg['dataset_images']} images) runs on the worker "
            f"and a poller reads `GET /jobs/{{id}}` every {cfg['poll_interval_s']} s. Load part: "
            f"{load['seconds']:.0f} s.")


# -- bench/results/README.md ----------------------------------------------------------------
def readme_section(results: Path) -> str:
    head = "### Reliability (`make bench-reliability`, [`reliability.md`](reliability.md))"
    serve = report.load_results("serve", results)  # what /detect did with no job running
    return report.section(head, report.load_results("reliability", results), lambda r: _readme_lines(r, serve))


def _readme_lines(result: dict[str, Any], serve: dict[str, Any] | None) -> list[str]:
    load, tests = result["load"], result["tests"]
    parts = [f"tests {tests['seconds']:.0f} s" if tests else None, f"load {load['seconds']:.0f} s" if load else None]
    lines = [
        ("`python -m bench.reliability` runs the hardening tests (schema fuzzing, hostile uploads, tenant isolation, "
         "fault injection on a private PostgreSQL + Redis, rate limits; each reports what it saw through the "
         "`record_figures` fixture and asserts on it itself), then its own load (below). \"met\" is computed from "
         "the figures (and the test's own outcome); a section that did not run says so. One run at commit "
         f"{report.commit_text(result['git'])}, {result['machine']['date']}, {result['total_seconds']:.0f} s "
         f"({', '.join(p for p in parts if p)}):"), "",
        *table(result["rows"]), "",
    ]
    if load:
        lines += [_load_text(load), ""]
        d = load["detect"]
        lines.append(
            f"The `/detect` throughput while a job trains on the same cores ({d['images_per_s']:.0f} img/s, mean "
            f"micro-batch {d['mean_batch_size']})"
            + (f" compares with what `make bench-serve` measured at {load['config']['clients']} clients with no job "
               f"({_serve_span(serve, load['config']['clients'])} img/s with batching on, another run)" if serve else "")
            + "; a fault-test run draws its own random kill moments (`FLEXBIN_FAULT_SEED` repeats one).")
    return lines


def _serve_span(serve: dict[str, Any], clients: int) -> str:
    values = [c["images_per_s"] for c in serve["cells"] if c["batching"] == "on" and c["clients"] == clients]
    return f"{min(values):.0f}–{max(values):.0f}" if values else "-"


if __name__ == "__main__":
    main()
