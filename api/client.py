"""Client helper for `POST /detect`: post a folder of images, get one detections document.

    python -m api.client detect --url http://127.0.0.1:8000 --key dev FOLDER --out detections.json

or from Python: `detect_folder("http://127.0.0.1:8000", "dev", "photos/")`. Only httpx and
tenacity are needed.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
RATE_LIMIT_RETRIES = 5  # a 429 (the key's rate limit) is retried after its Retry-After, this often


class DetectError(RuntimeError):
    """The API refused a request; the message carries its status and `detail`."""


def image_files(folder: Path | str) -> list[Path]:
    """JPEG and PNG files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DetectError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _wait_retry_after(state: RetryCallState) -> float:
    """What the 429's `Retry-After` asks for (whole seconds, at most 60; 1 when it says nothing usable)."""
    retry_after = state.outcome.result().headers.get("Retry-After", "1") if state.outcome else "1"
    return min(60, int(retry_after)) if retry_after.isdigit() else 1


def _post(client: httpx.Client, paths: Sequence[Path], form: dict[str, str]) -> dict[str, Any]:
    files = [("images", (p.name, p.read_bytes(), IMAGE_SUFFIXES[p.suffix.lower()])) for p in paths]
    over_the_rate_limit = Retrying(
        retry=retry_if_result(lambda r: r.status_code == 429), wait=_wait_retry_after,
        stop=stop_after_attempt(1 + RATE_LIMIT_RETRIES),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    r = over_the_rate_limit(client.post, "/detect", files=files, data=form)
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise DetectError(f"POST /detect ({', '.join(p.name for p in paths)}): HTTP {r.status_code}: {detail}")
    return r.json()


def detect_folder(url: str, key: str, folder: Path | str, *, checkpoint_id: str | None = None,
                  score_threshold: float = 0.05, images_per_request: int = 4, concurrency: int = 4,
                  timeout: float = 120.0) -> dict[str, Any]:
    """Detect pedestrians in every JPEG/PNG of `folder`.

    Images go `images_per_request` at a time over `concurrency` connections (the server
    micro-batches them with other clients' images). Returns
    `{"url", "folder", "checkpoint_id", "results": [{"filename", "width", "height",
    "detections": [{"box": [x1, y1, x2, y2], "score"}], "checkpoint_id"}]}` in file order,
    boxes in each image's pixels, best first. Raises DetectError on the first refusal (a 429,
    the key's rate limit, is first retried after its `Retry-After`, up to 5 times).
    """
    paths = image_files(folder)
    chunks = [paths[i:i + images_per_request] for i in range(0, len(paths), max(1, images_per_request))]
    form = {"score_threshold": str(score_threshold)}
    if checkpoint_id:
        form["checkpoint_id"] = checkpoint_id
    with httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                      limits=httpx.Limits(max_connections=max(1, concurrency))) as client, \
            ThreadPoolExecutor(max(1, concurrency)) as pool:
        responses = list(pool.map(lambda chunk: _post(client, chunk, form), chunks))
    results = []
    for response in responses:
        for result in response["results"]:
            results.append({**result, "checkpoint_id": response["checkpoint_id"]})
    return {"url": url, "folder": str(folder),
            "checkpoint_id": responses[0]["checkpoint_id"] if responses else checkpoint_id,
            "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.client", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    det = sub.add_parser("detect", help="post every JPEG/PNG of a folder to POST /detect")
    det.add_argument("folder", type=Path)
    det.add_argument("--url", default="http://127.0.0.1:8000")
    det.add_argument("--key", required=True, help="API key (Authorization: Bearer)")
    det.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    det.add_argument("--checkpoint-id", default=None, help="default: the tenant's deployed checkpoint")
    det.add_argument("--score-threshold", type=float, default=0.05)
    det.add_argument("--images-per-request", type=int, default=4)
    det.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        doc = detect_folder(args.url, args.key, args.folder, checkpoint_id=args.checkpoint_id,
                            score_threshold=args.score_threshold, images_per_request=args.images_per_request,
                            concurrency=args.concurrency)
    except (DetectError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(doc, indent=2)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
        n = sum(len(r["detections"]) for r in doc["results"])
        print(f"{len(doc['results'])} images, {n} detections from checkpoint {doc['checkpoint_id']} -> {args.out}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
