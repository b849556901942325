"""The containerised deployment, run for real: docker-compose.yml + docker-compose.loopback.yml
(host networking on loopback ports, a CPU worker), and a backup/restore drill.

    make compose-check                       # tools/compose_check.sh: sets up Docker, then this
    python -m bench.compose                  # where a Docker engine and `docker compose` run
    python -m bench.compose --down-only      # remove what an interrupted check left behind

With compose project `flexbin-check`: build the image; `up` (postgres, redis with AOF, the
one-shot migrate, api, worker) until `/readyz`; upload a small PedNet and a Penn-Fudan zip;
job A runs to `succeeded`, is deployed and answers `/detect`; job B runs, `pg_dump` is taken
while it runs, the worker container is restarted mid-job and B finishes with every step
exactly once; `down` + `up` keeps every row and blob. Then, with project
`flexbin-check-restore`: a fresh PostgreSQL, `pg_restore` of the dump (the procedure of
docs/deployment.md), every blob's sha256 verified in the database, the restored API serves
byte-identical checkpoints and the same detections, and its worker finishes job B (running at
the dump) with the same checkpoints as the original. Both projects are removed at the end
with their volumes, also on failure. Writes bench/results/compose.json and compose.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import report
from bench.stack import TERMINAL, dataset_zip, tiny_model, wait_until
from core.paths import default_data_dir

PROJECT = "flexbin-check"
RESTORE_PROJECT = "flexbin-check-restore"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.loopback.yml")
TENANT, KEY = "check", "compose-check-key"
# random weights score every box about 0.01 or less: with no score floor, /detect returns
# boxes, so the restored API's detections are compared on something
MODEL_CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 128, "width": 8, "score_thresh": 0.0}
# Goals, fixed before measuring (issue 14: the whole check within 20 minutes after the first
# image build, on the project's 2-core machine).
GOALS = {"build_s": 1800.0, "stack_ready_s": 180.0, "job_s": 300.0, "check_s": 1200.0}


class CheckFailed(AssertionError):
    pass


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_until(predicate, timeout, what, interval=0.5, error=CheckFailed)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Stack:
    """One compose project of docker-compose.yml + docker-compose.loopback.yml."""

    def __init__(self, project: str, env: dict[str, str], log_dir: Path) -> None:
        self.project, self.env, self.log_dir = project, env, log_dir
        config = json.loads(self.compose("config", "--format", "json", capture=True).stdout)
        api_env = config["services"]["api"]["environment"]
        self.image = config["services"]["migrate"]["image"]
        self.api_url = f"http://127.0.0.1:{api_env['FLEXBIN_PORT']}"
        # the same database the services use, from this machine (psycopg's URL form)
        self.database_url = api_env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    def argv(self, *args: str) -> list[str]:
        return ["docker", "compose", "-p", self.project, *(a for f in COMPOSE_FILES for a in ("-f", f)), *args]

    def compose(self, *args: str, capture: bool = False, stdin: Path | None = None, stdout: Path | None = None,
                timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """`docker compose -p <project> -f ... <args>`; raises CheckFailed with its stderr when it fails.
        `stdin` / `stdout`: files to read from / write to (a dump, logs)."""
        with ExitStack() as files:
            fin = files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
            fout = files.enter_context(open(stdout, "wb")) if stdout else (subprocess.PIPE if capture else None)
            done = subprocess.run(self.argv(*args), cwd=report.ROOT, env=self.env, stdin=fin, stdout=fout, stderr=subprocess.PIPE,
                                  text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise CheckFailed(f"`docker compose -p {self.project} {' '.join(args)}` exited {done.returncode}:\n"
                              f"{done.stderr[-3000:]}")
        return done

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def up(self, *services: str, timeout: float = 600) -> float:
        """`up -d` (without building), then wait for /readyz unless only some services start;
        returns the seconds it took."""
        started = time.monotonic()
        self.compose("up", "-d", "--no-build", *(("--wait", *services) if services else ()), timeout=timeout)
        if not services:
            wait_for(self.ready, timeout, f"{self.project}: /readyz")
        return time.monotonic() - started

    def down(self, *, volumes: bool = False) -> None:
        self.compose("down", "--remove-orphans", *(("--volumes",) if volumes else ()), timeout=300)

    def save_logs(self, phase: str) -> None:
        """Its containers' logs into <log dir>/<project>.<phase>.log (`down` removes them)."""
        try:
            if not self.container_ids():
                return
            self.compose("logs", "--no-color", "--timestamps", stdout=self.log_dir / f"{self.project}.{phase}.log",
                         timeout=120)
        except (CheckFailed, subprocess.SubprocessError, OSError):
            pass

    def container_ids(self) -> list[str]:
        out = self.compose("ps", "-a", "-q", capture=True).stdout
        return out.split()

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, connect_timeout=10) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def snapshot(self) -> dict[str, Any]:
        """Every table's row count and content digest, and every blob's stored sha256 with
        whether its bytes still hash to it (computed inside PostgreSQL)."""
        tables = [t for (t,) in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        counts, digests = {}, {}
        for table in tables:
            count, digest = self.sql(f'SELECT count(*), md5(coalesce(string_agg(md5(t::text), \',\' '
                                     f'ORDER BY md5(t::text)), \'\')) FROM "{table}" AS t')[0]
            counts[table], digests[table] = count, digest
        blobs = self.sql("SELECT id, sha256, encode(sha256(data), 'hex') = sha256 FROM blobs ORDER BY id")
        return {"counts": counts, "digests": digests, "blobs": {i: s for i, s, _ in blobs},
                "bad_blobs": [i for i, _, ok in blobs if not ok]}

    def job_checkpoints(self, job_id: str) -> dict[int, str]:
        """step index -> the sha256 stored with its checkpoint's blob."""
        rows = self.sql("SELECT s.index, b.sha256 FROM job_steps s JOIN checkpoints c ON c.id = s.checkpoint_id "
                        "JOIN blobs b ON b.id = c.blob_id WHERE s.job_id = %s ORDER BY s.index", job_id)
        return dict(rows)  # type: ignore[arg-type]


def job_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/jobs/{job_id}")
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def wait_job(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    job = wait_for(lambda: (j := job_state(client, job_id))["status"] in TERMINAL and j, timeout, f"job {job_id}")
    if job["status"] != "succeeded":
        raise CheckFailed(f"job {job_id} ended {job['status']}: {job['error']}")
    return job  # type: ignore[no-any-return]


def download_hashes(client: httpx.Client, checkpoint_ids: list[str]) -> dict[str, str]:
    hashes = {}
    for cid in checkpoint_ids:
        r = client.get(f"/checkpoints/{cid}/download")
        r.raise_for_status()
        hashes[cid] = sha256(r.content)
    return hashes


def detect(client: httpx.Client, image: Path) -> dict[str, Any]:
    r = client.post("/detect", files={"images": (image.name, image.read_bytes(), "image/png")},
                    data={"score_threshold": "0"})  # every box: more to compare
    if r.status_code != 200:
        raise CheckFailed(f"/detect answered {r.status_code}: {r.text}")
    return r.json()  # type: ignore[no-any-return]


def steps_exactly_once(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    """A finished job's steps: indices 0..n-1 each once, as many checkpoints as steps, and
    every checkpoint blob's bytes hashing to its stored sha256."""
    job_id = job["id"]
    indices = [s["index"] for s in job["steps"]]
    per_index = dict(stack.sql("SELECT index, count(*) FROM job_steps WHERE job_id = %s GROUP BY index", job_id))
    checkpoints = stack.sql("SELECT count(*) FROM checkpoints WHERE job_id = %s", job_id)[0][0]
    bad = stack.sql("SELECT count(*) FROM checkpoints c JOIN blobs b ON b.id = c.blob_id "
                    "WHERE c.job_id = %s AND encode(sha256(b.data), 'hex') <> b.sha256", job_id)[0][0]
    return {
        "steps": len(indices),
        "total_steps": job["progress"]["total_steps"],
        "indices_0_to_n": indices == list(range(len(indices))),
        "duplicated": sum(1 for n in per_index.values() if n > 1),
        "checkpoints": checkpoints,
        "bad_checksums": bad,
        "ok": (indices == list(range(len(indices))) and all(n == 1 for n in per_index.values())
               and checkpoints == len(indices) and bad == 0 and len(indices) == job["progress"]["total_steps"]),
    }


def run_check(args: argparse.Namespace, env: dict[str, str], log_dir: Path) -> dict[str, Any]:
    """The whole drill on two compose projects; both are removed at the end, also on failure."""
    result: dict[str, Any] = {}
    started = time.monotonic()
    main, restored = Stack(PROJECT, env, log_dir), Stack(RESTORE_PROJECT, env, log_dir)
    pngs = sorted((args.data / "PNGImages").glob("*.png"))
    if len(pngs) < args.images:
        raise CheckFailed(f"{len(pngs)} PNG images under {args.data / 'PNGImages'}, {args.images} needed: "
                          "point --data or FLEXBIN_DEMO_DATA at a Penn-Fudan folder")
    image, dump = pngs[0], log_dir / "flexbin.dump"
    try:
        result["build"] = build_image(main, env, log_dir)
        after_build = time.monotonic()
        report.log("docker compose up ...")
        result["stack_ready_s"] = round(main.up(), 1)
        result["network"] = network_discipline(main)
        with main.client() as client:
            ids = upload(client, args)
            report.log("job A ...")
            result.update(job_deployed(client, main, ids, image, args))
            report.log("job B: pg_dump while it runs, then a worker restart mid-job ...")
            result["restart"], result["dump"] = job_with_restart(args, main, client, ids, dump)
            report.log("docker compose down + up ...")
            result["persistence"] = down_and_up(main)
            original = {"detections": detect(client, image), "job_b": main.job_checkpoints(result["restart"]["job_id"]),
                        "hashes": download_hashes(client, [cid for (cid,) in main.sql("SELECT id FROM checkpoints ORDER BY id")])}
        main.save_logs("second-up")
        main.down()  # the restore starts from the dump alone; these volumes go at the end
        report.log("restore drill ...")
        result["restore"] = restore_drill(args, restored, dump, image, original, result["restart"]["job_id"])
        result["check_s"] = round(time.monotonic() - after_build, 1)
        result["total_s"] = round(time.monotonic() - started, 1)
        return result
    finally:
        for stack in (main, restored):
            stack.save_logs("end")
            try:
                stack.down(volumes=True)
            except (CheckFailed, subprocess.SubprocessError) as exc:
                print(f"cleanup of {stack.project}: {exc}", file=sys.stderr)
        dump.unlink(missing_ok=True)


def build_image(main: Stack, env: dict[str, str], log_dir: Path) -> dict[str, Any]:
    """`docker compose build` (api, worker and migrate share one image: building it for one
    service builds it once); the replaced build, now untagged, is removed."""
    previous = image_id(main.image)
    report.log(f"building {main.image} ...")
    t0 = time.monotonic()
    with open(log_dir / "build.log", "wb") as build_log:
        built = subprocess.run(main.argv("build", "--progress", "plain", "migrate"), cwd=report.ROOT, env=env,
                               stdout=build_log, stderr=subprocess.STDOUT, check=False, timeout=3600)
    if built.returncode != 0:
        raise CheckFailed(f"the image build failed: {log_dir / 'build.log'}")
    out = {"seconds": round(time.monotonic() - t0, 1), "image_existed_before": bool(previous),
           "dependencies_cached": dependency_step_cached(log_dir / "build.log")}
    if previous and previous != image_id(main.image):
        subprocess.run(["docker", "image", "rm", previous], capture_output=True, check=False)
    return out


def upload(client: httpx.Client, args: argparse.Namespace) -> dict[str, str]:
    weights, card = tiny_model(MODEL_CARD)
    model = client.post("/models", files={"weights": ("pednet.safetensors", weights)}, data={"card": card})
    dataset = client.post("/datasets", files={"archive": ("pennfudan.zip", dataset_zip(args.images, root=args.data))})
    if model.status_code != 201 or dataset.status_code != 201:
        raise CheckFailed(f"uploads: {model.status_code} {model.text} / {dataset.status_code} {dataset.text}")
    return {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"]}


def job_deployed(client: httpx.Client, stack: Stack, ids: dict[str, str], image: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    """Job A runs to `succeeded`, its selected checkpoint is deployed and answers `/detect`."""
    t0 = time.monotonic()
    created = client.post("/jobs", json={**ids, "target": {"min_compression_ratio": 2.0}, "finetune_iters": 5,
                                         "batch_size": 4, "seed": 1})
    if created.status_code != 202:
        raise CheckFailed(f"POST /jobs: {created.status_code} {created.text}")
    job_a = wait_job(client, created.json()["id"], args.job_timeout)
    job_s = round(time.monotonic() - t0, 1)
    deployed = client.put("/deployment", json={"checkpoint_id": job_a["selected_checkpoint_id"]})
    if deployed.status_code != 200:
        raise CheckFailed(f"PUT /deployment: {deployed.status_code} {deployed.text}")
    wait_for(stack.ready, 120, "/readyz with the deployed checkpoint")
    detections = detect(client, image)
    return {"job_s": job_s, "detect": {"checkpoint_id": detections["checkpoint_id"],
                                       "deployed": detections["checkpoint_id"] == job_a["selected_checkpoint_id"],
                                       "detections": len(detections["results"][0]["detections"])}}


def down_and_up(stack: Stack) -> dict[str, Any]:
    """`docker compose down` + `up`: every row and blob still there, nothing left running between."""
    before = stack.snapshot()
    stack.save_logs("first-up")
    stack.down()
    containers_left = stack.container_ids()
    ready_again_s = stack.up()
    after = stack.snapshot()
    out = {
        "containers_left_after_down": len(containers_left),
        "rows_before": sum(before["counts"].values()), "rows_after": sum(after["counts"].values()),
        "blobs_before": len(before["blobs"]), "blobs_after": len(after["blobs"]),
        "tables_changed": sorted(t for t in before["digests"] if before["digests"][t] != after["digests"].get(t)),
        "bad_blobs": after["bad_blobs"], "ready_again_s": round(ready_again_s, 1),
        "redis_aof": redis_aof_enabled(stack),
    }
    out["ok"] = (not out["tables_changed"] and not after["bad_blobs"] and before["blobs"] == after["blobs"]
                 and not containers_left)
    return out


def dependency_step_cached(build_log: Path) -> bool | None:
    """Whether BuildKit reused the Dockerfile's pip install step (None: step not found)."""
    text = build_log.read_text(errors="replace")
    step = next((line.split()[0] for line in text.splitlines() if "RUN" in line and "pip install" in line), None)
    return None if step is None else f"{step} CACHED" in text


def image_id(name: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True,
                          check=False).stdout.strip()


def redis_aof_enabled(stack: Stack) -> bool:
    config = json.loads(stack.compose("config", "--format", "json", capture=True).stdout)
    command = config["services"]["redis"]["command"]
    port = command[command.index("--port") + 1] if "--port" in command else "6379"
    info = stack.compose("exec", "-T", "redis", "redis-cli", "-p", port, "info", "persistence", capture=True).stdout
    return "aof_enabled:1" in info


def network_discipline(stack: Stack) -> dict[str, Any]:
    """What the running stack's containers use: network modes and the networks they joined."""
    ids = stack.container_ids()
    inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                                          check=True).stdout)
    modes = {c["Name"].lstrip("/"): c["HostConfig"]["NetworkMode"] for c in inspected}
    networks = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True,
                              check=True).stdout.split()
    return {"container_network_modes": modes, "docker_networks": networks,
            "ok": set(modes.values()) == {"host"} and set(networks) <= {"host", "none"}}


def job_with_restart(args: argparse.Namespace, stack: Stack, client: httpx.Client, ids: dict[str, str],
                     dump: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Job B: pg_dump while it runs, then `docker compose restart worker` while it still runs;
    it must finish with every step exactly once, the steps committed before the restart kept."""
    body = {**ids, "target": {"max_miss_rate_increase": 1.0}, "min_layer_params": 0,
            "finetune_iters": args.finetune_iters, "batch_size": 4, "seed": 2}
    created = client.post("/jobs", json=body)
    if created.status_code != 202:
        raise CheckFailed(f"POST /jobs: {created.status_code} {created.text}")
    job_id = created.json()["id"]
    def running_with_a_step() -> bool:
        job = job_state(client, job_id)
        return job["status"] == "running" and len(job["steps"]) >= 1

    wait_for(running_with_a_step, args.job_timeout, "job B running with a committed step")

    t0 = time.monotonic()
    stack.compose("exec", "-T", "postgres", "pg_dump", "--username=flexbin", "--dbname=flexbin", "--format=custom",
                  stdout=dump, timeout=300)
    dump_info = {"seconds": round(time.monotonic() - t0, 1), "bytes": dump.stat().st_size,
                 "job_running_after": job_state(client, job_id)["status"] == "running"}
    if not dump_info["job_running_after"]:
        raise CheckFailed("job B ended during pg_dump: raise --finetune-iters")

    before = job_state(client, job_id)
    if before["status"] != "running":
        raise CheckFailed("job B ended before the restart: raise --finetune-iters")
    kept = {s["index"]: s["checkpoint_id"] for s in before["steps"]}
    worker_before = stack.compose("ps", "-q", "worker", capture=True).stdout.strip()
    started_before = docker_started_at(worker_before)
    t0 = time.monotonic()
    stack.compose("restart", "worker", timeout=300)
    restart_s = time.monotonic() - t0
    job = wait_job(client, job_id, args.job_timeout)
    steps = steps_exactly_once(stack, job)
    after = {s["index"]: s["checkpoint_id"] for s in job["steps"]}
    restart = {
        "job_id": job_id,
        "steps_before_restart": len(kept),
        "worker_restarted": docker_started_at(worker_before) != started_before,
        "restart_s": round(restart_s, 1),
        "attempts": job["attempts"],
        "kept_steps_unchanged": all(after.get(i) == c for i, c in kept.items()),
        **steps,
    }
    restart["ok"] = (steps["ok"] and restart["kept_steps_unchanged"] and restart["worker_restarted"]
                     and job["attempts"] >= 2 and len(kept) < steps["steps"])
    return restart, dump_info


def docker_started_at(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


def restore_drill(args: argparse.Namespace, stack: Stack, dump: Path, image: Path, original: dict[str, Any],
                  job_b_id: str) -> dict[str, Any]:
    """docs/deployment.md's restore, step by step, on a project with fresh volumes; `original`:
    what the first project served ("hashes" of its checkpoints, "detections") and job B's
    checkpoints ("job_b")."""
    t0 = time.monotonic()
    stack.up("postgres")
    stack.compose("exec", "-T", "postgres", "pg_restore", "--username=flexbin", "--dbname=flexbin", "--no-owner",
                  "--exit-on-error", stdin=dump, timeout=600)
    # the broker's messages are not in the backup: queued jobs get sent again by the workers
    requeued = stack.compose("exec", "-T", "postgres", "psql", "--username=flexbin", "--dbname=flexbin", "-v",
                             "ON_ERROR_STOP=1", "-c", "UPDATE jobs SET enqueued_at = NULL WHERE status = 'queued'",
                             capture=True).stdout.strip()
    restored_s = time.monotonic() - t0
    snap = stack.snapshot()
    (status_at_dump, steps_at_dump), = stack.sql(
        "SELECT status, (SELECT count(*) FROM job_steps WHERE job_id = %s) FROM jobs WHERE id = %s", job_b_id, job_b_id)
    stack.up()
    ready_s = time.monotonic() - t0
    with stack.client() as client:
        checkpoint_ids = [cid for (cid,) in stack.sql("SELECT id FROM checkpoints ORDER BY id")]
        hashes = download_hashes(client, checkpoint_ids)
        same = [cid for cid in checkpoint_ids if original["hashes"].get(cid) == hashes[cid]]
        detections = detect(client, image)
        report.log(f"restored: waiting for the worker to resume job B from step {steps_at_dump} ...")
        job_b = wait_job(client, job_b_id, args.job_timeout + 180)  # + the dead worker's lease
        resumed = stack.job_checkpoints(job_b_id)
    result = {
        "restore_s": round(restored_s, 1), "queued_jobs_marked_unsent": requeued, "ready_s": round(ready_s, 1),
        "blobs": len(snap["blobs"]), "bad_blobs": snap["bad_blobs"],
        "rows": sum(snap["counts"].values()),
        "checkpoints": len(checkpoint_ids), "checkpoints_identical": len(same),
        "detections_identical": detections == original["detections"],
        "job_b_status_at_dump": status_at_dump, "job_b_steps_at_dump": steps_at_dump,
        "job_b_resumed": job_b["status"], "job_b_checkpoints_identical": resumed == original["job_b"],
    }
    result["ok"] = (not snap["bad_blobs"] and snap["blobs"] and len(same) == len(checkpoint_ids) > 0
                    and result["detections_identical"] and status_at_dump == "running"
                    and job_b["status"] == "succeeded" and result["job_b_checkpoints_identical"])
    return result


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    r, p, s = result["restart"], result["persistence"], result["restore"]
    build = result["build"]
    return [
        {"what": "image build (`docker compose build`)",
         "measured": f"{build['seconds']:.0f} s (Python packages "
                     f"{'cached' if build['dependencies_cached'] else 'installed'}"
                     f"{'' if build['image_existed_before'] else ', no image before'})",
         "goal": f"<= {GOALS['build_s']:.0f} s", "met": build["seconds"] <= GOALS["build_s"]},
        {"what": "stack ready (`up -d` to `/readyz` 200)", "measured": f"{result['stack_ready_s']:.0f} s",
         "goal": f"<= {GOALS['stack_ready_s']:.0f} s", "met": result["stack_ready_s"] <= GOALS["stack_ready_s"]},
        {"what": "job A (POST /jobs to succeeded), deployed, /detect",
         "measured": f"{result['job_s']:.0f} s; /detect 200 from the deployed checkpoint "
                     f"({result['detect']['detections']} boxes)",
         "goal": f"<= {GOALS['job_s']:.0f} s and /detect from the deployed checkpoint",
         "met": result["job_s"] <= GOALS["job_s"] and result["detect"]["deployed"]},
        {"what": "worker container restarted mid-job (job B)",
         "measured": f"restart after {r['steps_before_restart']} of {r['total_steps']} steps; "
                     f"succeeded, attempts {r['attempts']}; "
                     f"{r['steps']} steps, each once ({r['duplicated']} duplicated), {r['checkpoints']} checkpoints, "
                     f"{r['bad_checksums']} bad checksums; steps before the restart kept: "
                     f"{'yes' if r['kept_steps_unchanged'] else 'no'}",
         "goal": "succeeds, every step exactly once, committed steps kept", "met": r["ok"]},
        {"what": "`docker compose down` + `up`",
         "measured": f"{p['rows_before']} rows / {p['blobs_before']} blobs before, {p['rows_after']} / "
                     f"{p['blobs_after']} after; tables changed: {', '.join(p['tables_changed']) or 'none'}; "
                     f"bad blobs {len(p['bad_blobs'])}; Redis AOF {'on' if p['redis_aof'] else 'off'}; "
                     f"ready again in {p['ready_again_s']:.0f} s",
         "goal": "every row and blob still there", "met": p["ok"]},
        {"what": "backup/restore drill (pg_dump while job B runs, pg_restore into a fresh database)",
         "measured": f"dump {result['dump']['bytes'] / 2**20:.1f} MiB in {result['dump']['seconds']:.1f} s; restored "
                     f"{s['rows']} rows, {s['blobs']} blobs ({len(s['bad_blobs'])} bad sha256); restored API: "
                     f"{s['checkpoints_identical']} of {s['checkpoints']} checkpoints byte-identical, /detect "
                     f"{'identical' if s['detections_identical'] else 'different'}; job B (running at the dump, "
                     f"{s['job_b_steps_at_dump']} steps) resumed to {s['job_b_resumed']}, checkpoints "
                     f"{'identical' if s['job_b_checkpoints_identical'] else 'different'}",
         "goal": "every blob verifies; the restored API serves the same checkpoints", "met": s["ok"]},
        {"what": "network", "measured": f"containers on {sorted(set(result['network']['container_network_modes'].values()))}"
                                        f" networking; Docker networks: {', '.join(result['network']['docker_networks'])}",
         "goal": "host networking on 127.0.0.1 only, no bridge network", "met": result["network"]["ok"]},
        {"what": "whole check after the image build", "measured": f"{result['check_s']:.0f} s",
         "goal": f"<= {GOALS['check_s']:.0f} s", "met": result["check_s"] <= GOALS["check_s"]},
    ]


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# `docker compose` deployment check (`make compose-check`, `python -m bench.compose`)", "",
        (f"{env['date']}, commit {report.commit_text(result['git'])}; {report.machine_text(env)}. Docker engine "
         f"{env['docker_engine']}, Compose {env['compose']}; images: "
         f"{', '.join(f'{k} `{v}`' for k, v in env['images'].items())}. Compose files: "
         f"{' + '.join(COMPOSE_FILES)} (host networking on loopback ports, a CPU worker with 1 torch thread). "
         f"Model: PedNet width 8 at 128 px, random weights, no score floor; {result['args']['images']} "
         "Penn-Fudan images."), "",
        *table(result["table"]),
    ]
    return "\n".join(lines) + "\n"


def table(rows: list[dict[str, Any]]) -> list[str]:
    return report.markdown_table(rows, [("what", "what"), ("measured", "measured"), ("goal", "goal"),
                                        ("met", lambda row: "yes" if row["met"] else "**no**")])


def docker_versions() -> dict[str, str]:
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()

    return {"docker_engine": out("docker", "version", "--format", "{{.Server.Version}}"),
            "compose": out("docker", "compose", "version", "--short")}


def main() -> None:
    args = parse_args()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="flexbin-compose-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLEXBIN_API_KEYS": f"{TENANT}:{KEY}", "FLEXBIN_DEMO": "false",
           "POSTGRES_PASSWORD": os.environ.get("POSTGRES_PASSWORD") or secrets.token_urlsafe(18),
           "FLEXBIN_DATA_DIR": str(args.data.resolve().parent)}
    if args.down_only:
        for project in (PROJECT, RESTORE_PROJECT):
            Stack(project, env, log_dir).down(volumes=True)
        return
    # a stop signal unwinds through run_check's `finally`, which removes the projects
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        result = run_check(args, env, log_dir)
    except CheckFailed as exc:
        sys.exit(f"compose check FAILED: {exc}\n(logs in {log_dir})")
    result["table"] = table_rows(result)
    result["environment"] = {**report.machine(), **docker_versions(), "images": {
        "base": env.get("FLEXBIN_BASE_IMAGE", "python:3.11-slim"),
        "postgres": env.get("FLEXBIN_POSTGRES_IMAGE", "postgres:16"),
        "redis": env.get("FLEXBIN_REDIS_IMAGE", "redis:7")}}
    result["git"] = report.git_commit()
    result["args"] = {"images": args.images, "finetune_iters": args.finetune_iters, "data": str(args.data)}
    result["all_met"] = all(row["met"] for row in result["table"])
    report.write_results("compose", result, markdown(result))
    print((report.RESULTS / "compose.md").read_text())
    print(f"logs in {log_dir}")
    if not result["all_met"]:
        sys.exit(1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compose", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="Penn-Fudan folder (PNGImages/, "
                        "Annotation/) for the uploaded dataset and the /detect image")
    parser.add_argument("--images", type=int, default=16, help="images in the uploaded dataset")
    parser.add_argument("--finetune-iters", type=int, default=40,
                        help="job B's fine-tuning iterations per step (long enough to be caught mid-job)")
    parser.add_argument("--job-timeout", type=float, default=600)
    parser.add_argument("--log-dir", type=Path, default=None, help="compose logs, build log (default: a temp dir)")
    parser.add_argument("--down-only", action="store_true", help="only remove the check's projects and volumes")
    return parser.parse_args()


if __name__ == "__main__":
    main()


# -- bench/results/README.md ----------------------------------------------------------------
def readme_section(results: Path) -> str:
    head = "### The containerised deployment (`make compose-check`, [`compose.md`](compose.md))"
    return report.section(head, report.load_results("compose", results), _readme_lines)


def _readme_lines(result: dict[str, Any]) -> list[str]:
    env = result["environment"]
    return [
        (f"`docker-compose.yml` + `docker-compose.loopback.yml` built and run for real by `make compose-check` "
         f"(`tools/compose_check.sh`, then `python -m bench.compose`): the stack, a job, a deployment, `/detect`, a "
         "worker restart mid-job, `down` + `up`, and a backup/restore drill (docs/deployment.md). One run, "
         f"{env['date']}, commit {report.commit_text(result['git'])}, Docker engine {env['docker_engine']}, Compose "
         f"{env['compose']}; every goal {'met' if result['all_met'] else 'met but the ones marked **no**'}:"), "",
        *table(result["table"])]
