"""Hostile uploads, built here, sent to the real API over HTTP: each one gets a clear 4xx with a
`detail` string, the database keeps its row counts, and nothing lands on disk (no zip entry is
ever extracted: the traversal targets do not appear, and the repo's var/ is unchanged)."""
from __future__ import annotations

import io
import json
import os
import pickle
import stat
import struct
import tempfile
import uuid
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.paths import REPO_ROOT, default_data_dir
from testkit.factories import (
    TINY_CARD,
    dataset_zip,
    pennfudan_names,
    run_tiny_job,
    tiny_model,
)
from testkit.stack import KEYS, Proc

MARK = f"flexbin-hostile-{uuid.uuid4().hex[:8]}"  # the name traversal entries try to write
# What the tests below saw, reported by test_hostile_figures (last in this module) to
# bench.reliability: the status of every hostile request by (endpoint, case) (None: no
# answer), and the tests after which the database or the disk had changed.
SEEN: dict[str, Any] = {"files": {}, "database_changed": [], "disk_changed": [], "memory_mib": {}}
# The API's resident memory may grow this much over its level before the corpus: every upload
# limit here is at most 20 MB, so only an unbounded decode (a bomb getting through) goes past it.
MAX_MEMORY_GROWTH_MIB = 256


# -- building blocks ------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking 8-bit RGB PNG declaring width x height pixels, a few hundred bytes long."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def real_png() -> bytes:
    return (default_data_dir() / "PNGImages" / f"{pennfudan_names(1)[0]}.png").read_bytes()


def big_png() -> bytes:
    """A real, decodable 4000x4000 PNG (16 Mpx, ~50 KB): over the tests' 2 Mpx /detect limit."""
    buf = io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(buf, "PNG")
    return buf.getvalue()


def real_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(real_png())).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def zip_of(entries: list[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def zip_bomb_declared() -> bytes:
    """Penn-Fudan members whose central-directory entries declare 4 GB uncompressed each."""
    data = bytearray(zip_of([("PNGImages/a.png", b"\0" * 1000), ("Annotation/a.txt", b"\0" * 1000)]))
    at = data.find(b"PK\x01\x02")
    while at != -1:
        struct.pack_into("<I", data, at + 24, 0xFFFFFFFE)  # uncompressed size
        at = data.find(b"PK\x01\x02", at + 4)
    return bytes(data)


def zip_bomb_lying() -> bytes:
    """A member declaring 1,000 bytes that inflates to 64 MB (1000:1 deflate of zeros)."""
    data = bytearray(zip_of([("Annotation/a.txt", b"\0" * (64 << 20)), ("PNGImages/a.png", real_png())]))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig)
        struct.pack_into("<I", data, at + offset, 1000)
    return bytes(data)


def zip_bomb_honest(members: int = 4) -> bytes:
    """Penn-Fudan members of 64 MB of zeros each, honestly declared (256 MB in a ~260 KB zip)."""
    zeros = b"\0" * (64 << 20)
    return zip_of([(f"{d}/{i}.{ext}", zeros) for i in range(members // 2)
                   for d, ext in (("PNGImages", "png"), ("Annotation", "txt"))])


def lying_safetensors() -> bytes:
    """A safetensors header whose tensor claims far more bytes than the file holds."""
    header = json.dumps({"features.0.0.weight": {"dtype": "F32", "shape": [4, 3, 3, 3],
                                                 "data_offsets": [0, 1 << 30]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 432


def huge_header_safetensors() -> bytes:
    return struct.pack("<Q", (1 << 63) - 1) + b"{}"


def torch_save_zip() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"features.0.0.weight": torch.zeros(4, 3, 3, 3)}, buf)
    return buf.getvalue()


def torchscript_zip() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch /tmp/{MARK}-pwned",))


# -- the corpus -----------------------------------------------------------------------------
def model_cases() -> list[tuple[str, bytes, bytes | str]]:
    """(case, weights, card: str as a form field, bytes as a file part)."""
    weights, card = tiny_model()
    return [
        ("pickle posing as safetensors", pickle.dumps(Exploit()), card),
        ("torch.save zip posing as safetensors", torch_save_zip(), card),
        ("TorchScript zip posing as safetensors", torchscript_zip(), card),
        ("safetensors header lying about sizes", lying_safetensors(), card),
        ("safetensors header length 2^63", huge_header_safetensors(), card),
        ("truncated safetensors", weights[: len(weights) // 2], card),
        ("non-UTF-8 card", weights, b'{"architecture": "flexbin_pednet\xff\xfe"}'),
        ("UTF-16 card", weights, card.encode("utf-16")),
        ('card with "weights": "DEFAULT"', weights, json.dumps({**TINY_CARD, "weights": "DEFAULT"})),
        ("card with __class__", weights, json.dumps({**TINY_CARD, "__class__": "os.system"})),
        ("card with __init__ kwargs", weights, json.dumps({**TINY_CARD, "__init__": {"cmd": "rm -rf /"}})),
        ("card asking for a 100000-wide model", weights, json.dumps({**TINY_CARD, "width": 100_000})),
        ("card asking for a 60000-pixel input", weights, json.dumps({**TINY_CARD, "input_size": 60_000})),
        ("card with a negative width", weights, json.dumps({**TINY_CARD, "width": -4})),
        ("card with a bool num_classes", weights, json.dumps({**TINY_CARD, "num_classes": True})),
        ("card as a JSON list", weights, json.dumps([TINY_CARD])),
        ("card nested 100000 deep", weights, "[" * 100_000 + "]" * 100_000),
    ]


def dataset_cases() -> list[tuple[str, bytes]]:
    png, stem = real_png(), pennfudan_names(1)[0]
    good = dataset_zip(2)
    return [
        ("truncated zip", good[: len(good) * 2 // 3]),
        ("truncated PNG in the zip", dataset_zip(2, replace={f"PNGImages/{stem}.png": png[: len(png) // 3]})),
        ("decompression-bomb PNG in the zip", dataset_zip(2, replace={f"PNGImages/{stem}.png": png_bomb()})),
        ("zip bomb: declared 4 GB", zip_bomb_declared()),
        ("zip bomb: header lies, inflates 64 MB", zip_bomb_lying()),
        ("zip bomb: 256 MB of honest zeros", zip_bomb_honest()),
        ("path traversal ../", dataset_zip(2, extra={f"../{MARK}.png": png})),
        ("path traversal PNGImages/../../", dataset_zip(2, extra={f"PNGImages/../../{MARK}.png": png})),
        ("absolute path", dataset_zip(2, extra={f"/tmp/{MARK}.png": png})),
        ("windows drive path", dataset_zip(2, extra={f"C:\\{MARK}.png": png})),
        ("symlink entry", zip_of([*[(n, d) for n, d in _entries(good)],
                                  symlink_entry(f"PNGImages/{MARK}.png", "/etc/passwd")])),
        ("COCO non-UTF-8 annotations.json", zip_of([("annotations.json", b'{"images": "\xff\xfe"}'),
                                                    ("a.png", png)])),
        ("COCO file_name traversal", zip_of([("annotations.json", json.dumps({
            "images": [{"id": 1, "file_name": f"../../{MARK}.png", "width": 10, "height": 10}],
            "annotations": [], "categories": []}).encode()), ("a.png", png)])),
        ("pickle posing as a zip", pickle.dumps(Exploit())),
    ]


def _entries(archive: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def detect_cases() -> list[tuple[str, bytes, str, str]]:
    png, jpeg = real_png(), real_jpeg()
    return [
        ("truncated PNG", png[: len(png) // 3], "t.png", "image/png"),
        ("truncated JPEG", jpeg[: len(jpeg) // 3], "t.jpg", "image/jpeg"),
        ("PNG header only", png[:33], "h.png", "image/png"),
        ("decompression-bomb PNG (10^10 pixels)", png_bomb(), "bomb.png", "image/png"),
        ("PNG over the pixel limit (4000x4000)", big_png(), "big.png", "image/png"),
        ("pickle posing as a PNG", pickle.dumps(Exploit()), "x.png", "image/png"),
        ("zip posing as a JPEG", dataset_zip(1), "x.jpg", "image/jpeg"),
        ("safetensors as octet-stream", lying_safetensors(), "x.bin", "application/octet-stream"),
        ("traversal filename", png[: len(png) // 3], f"../../{MARK}.png", "image/png"),
    ]


# -- fixtures -------------------------------------------------------------------------------
def disk_snapshot() -> dict[str, tuple[int, int]]:
    var = REPO_ROOT / "var"
    if not var.is_dir():
        return {}
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in var.rglob("*") if p.is_file()}


def traversal_targets() -> list[Path]:
    roots = {Path("/"), Path("/tmp"), Path(tempfile.gettempdir()), REPO_ROOT, REPO_ROOT.parent, REPO_ROOT / "var"}
    return [p for root in roots for p in root.glob(f"{MARK}*")]


@pytest.fixture(scope="module")
def checkpoint_id(api_url: str, start_worker) -> Any:
    """A real packed checkpoint of alpha's (a job with no fine-tuning), for /detect."""
    worker = start_worker("hostile-worker")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=120) as c:
        # the whole job, not just step 0: its later steps would otherwise change the database
        # while the tests below check that a hostile request changed nothing
        body = run_tiny_job(c, {"target": {"min_compression_ratio": 1.5}, "finetune_iters": 0, "batch_size": 2})
    worker.stop()
    return body["steps"][0]["checkpoint_id"]


@pytest.fixture(scope="module", autouse=True)
def api_memory(api_process: Proc) -> None:
    """The API's memory before the corpus, its peak reset, for `test_hostile_figures`."""
    api_process.reset_peak_memory()
    SEEN["memory_mib"]["before"] = api_process.memory_mib()["rss"]


@pytest.fixture
def unchanged(db_counts, request: pytest.FixtureRequest) -> Any:
    """Asserts after the test: same row counts, var/ untouched, no traversal target written."""
    before, disk = db_counts(), disk_snapshot()
    yield
    after, disk_after, targets = db_counts(), disk_snapshot(), traversal_targets()
    if after != before:
        SEEN["database_changed"].append(request.node.name)
    if disk_after != disk or targets:
        SEEN["disk_changed"].append(request.node.name)
    assert after == before
    assert disk_after == disk
    assert targets == []


def send(client: httpx.Client, path: str, case: str, **kwargs: Any) -> httpx.Response:
    """POST one hostile request, counted in SEEN whatever happens."""
    seen = SEEN["files"].setdefault((path, case), [])
    try:
        r = client.post(path, **kwargs)
    except httpx.TransportError:
        seen.append(None)
        raise
    seen.append(r.status_code)
    return r


def assert_clear_4xx(r: httpx.Response, case: str, allowed: set[int]) -> None:
    assert r.status_code in allowed, (case, r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and 0 < len(detail) <= 2000, (case, detail)
    print(f"\n{case}: {r.status_code} {detail[:160]}")


# -- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "weights", "card"), model_cases(), ids=[c[0] for c in model_cases()])
def test_hostile_model(client, unchanged, case: str, weights: bytes, card: bytes | str) -> None:
    files: dict[str, Any] = {"weights": ("weights.safetensors", weights, "application/octet-stream")}
    data = {}
    if isinstance(card, bytes):
        files["card"] = ("card.json", card, "application/json")
    else:
        data["card"] = card
    r = send(client, "/models", case, files=files, data=data)
    assert_clear_4xx(r, case, {400, 413, 415, 422})


@pytest.mark.parametrize(("case", "archive"), dataset_cases(), ids=[c[0] for c in dataset_cases()])
def test_hostile_dataset(client, unchanged, case: str, archive: bytes) -> None:
    r = send(client, "/datasets", case, files={"archive": ("data.zip", archive, "application/zip")})
    assert_clear_4xx(r, case, {400, 413, 415, 422})


@pytest.mark.parametrize(("case", "image", "name", "media_type"), detect_cases(), ids=[c[0] for c in detect_cases()])
def test_hostile_detect_image(client, checkpoint_id, unchanged, case: str, image: bytes, name: str,
                              media_type: str) -> None:
    r = send(client, "/detect", case, files=[("images", (name, image, media_type))],
             data={"checkpoint_id": checkpoint_id})
    assert_clear_4xx(r, case, {400, 413, 415, 422})
    # next to a good image, the bad one still fails the whole request
    r = send(client, "/detect", case, files=[("images", ("ok.png", real_png(), "image/png")),
                                             ("images", (name, image, media_type))],
             data={"checkpoint_id": checkpoint_id})
    assert_clear_4xx(r, case, {400, 413, 415, 422})


def test_detect_still_serves(client, checkpoint_id) -> None:
    """The checkpoint the hostile images were sent to does work on a real image."""
    r = client.post("/detect", files=[("images", ("ok.png", real_png(), "image/png"))],
                    data={"checkpoint_id": checkpoint_id})
    assert r.status_code == 200, r.text
    assert not list(Path("/tmp").glob(f"{MARK}*")), "the pickle payload ran"


def test_hostile_figures(record_figures: Any, api_process: Proc) -> None:
    """Last in this module: what the hostile-upload tests above saw (for `python -m bench.reliability`),
    checked once more as a whole: every hostile request answered with a 4xx, nothing stored."""
    files: dict[tuple[str, str], list[int | None]] = SEEN["files"]
    statuses = Counter(code for seen in files.values() for code in seen)

    def is_4xx(code: int | None) -> bool:
        return code is not None and 400 <= code < 500

    payload_ran = bool(list(Path("/tmp").glob(f"{MARK}*")))
    memory = {"before": SEEN["memory_mib"]["before"], **api_process.memory_mib()}
    growth = memory["peak"] - memory["before"]
    record_figures("hostile.uploads", files_tried=len(files),
                   files_rejected=sum(all(map(is_4xx, seen)) for seen in files.values()),
                   files_by_endpoint=dict(Counter(path for path, _ in files)), requests=sum(statuses.values()),
                   rejected_4xx=sum(n for code, n in statuses.items() if is_4xx(code)),
                   server_errors=sum(n for code, n in statuses.items() if code is not None and code >= 500),
                   accepted=sum(n for code, n in statuses.items() if code is not None and code < 400),
                   no_answer=statuses[None], statuses={str(k): n for k, n in statuses.items()},
                   database_changed=len(SEEN["database_changed"]), disk_changed=len(SEEN["disk_changed"]),
                   payload_ran=payload_ran, api_rss_before_mib=round(memory["before"]),
                   api_peak_rss_mib=round(memory["peak"]), api_peak_growth_mib=round(growth),
                   max_memory_growth_mib=MAX_MEMORY_GROWTH_MIB)
    assert all(map(is_4xx, statuses.elements())), statuses
    assert not SEEN["database_changed"] and not SEEN["disk_changed"] and not payload_ran, SEEN
    assert growth <= MAX_MEMORY_GROWTH_MIB, f"the API's peak memory grew {growth:.0f} MiB over the corpus ({memory})"
