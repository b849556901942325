"""Dataset readers: Penn-Fudan and COCO layouts, from a directory or an in-memory zip.

Every reader returns `list[ImageRecord]` sorted by name, with boxes validated to lie inside
their image and to have positive size; any problem raises DataError naming file and problem.
"""
from __future__ import annotations

import io
import json
import math
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from core.data.records import (
    DataError,
    ImageRecord,
    ImageSource,
    image_size,
    load_image,
)

_SIZE_RE = re.compile(r"^Image size \(X x Y x C\)\s*:\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)", re.MULTILINE)
_COUNT_RE = re.compile(r"^Objects with ground truth\s*:\s*(\d+)", re.MULTILINE)
_BOX_RE = re.compile(r'^Bounding box for object (\d+) "[^"]*" \(Xmin, Ymin\) - \(Xmax, Ymax\)'
                     r"\s*:\s*\((-?\d+)\s*,\s*(-?\d+)\)\s*-\s*\((-?\d+)\s*,\s*(-?\d+)\)\s*$")
_PEDESTRIAN_NAMES = {"person", "pedestrian"}
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")


def _check_boxes(boxes: torch.Tensor, width: int, height: int, where: str) -> None:
    """Raise DataError unless every x1y1x2y2 box has positive size and lies in W x H."""
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if not (x2 > x1 and y2 > y1):
            raise DataError(f"{where}: box {i} {[x1, y1, x2, y2]} has no positive size")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise DataError(f"{where}: box {i} {[x1, y1, x2, y2]} lies outside the "
                            f"{width}x{height} image")


def _check_image(source: ImageSource, where: str, size: tuple[int, int], full: bool) -> None:
    """Check the image opens (and fully decodes if `full`) and has the declared (W, H)."""
    if full:
        h, w = load_image(source, name=where).shape[-2:]
        actual = (int(w), int(h))
    else:
        actual = image_size(source, name=where)
    if actual != size:
        raise DataError(f"{where}: image is {actual[0]}x{actual[1]} but its annotation says "
                        f"{size[0]}x{size[1]}")


def _parse_pennfudan(text: str, where: str) -> tuple[tuple[int, int], torch.Tensor]:
    """Parse PASCAL Annotation 1.00 text into ((W, H), boxes FloatTensor[N,4] 0-based)."""
    size = _SIZE_RE.search(text)
    if size is None:
        raise DataError(f"{where}: missing 'Image size (X x Y x C) : W x H x C' line")
    width, height = int(size[1]), int(size[2])
    rows = []
    for line in text.splitlines():
        if line.startswith("Bounding box"):
            m = _BOX_RE.match(line.strip())
            if m is None:
                raise DataError(f"{where}: malformed line {line.strip()!r}")
            xmin, ymin, xmax, ymax = (int(v) for v in m.groups()[1:])
            rows.append([xmin - 1, ymin - 1, xmax, ymax])  # 1-based inclusive -> 0-based
    count = _COUNT_RE.search(text)
    if count is not None and int(count[1]) != len(rows):
        raise DataError(f"{where}: declares {count[1]} objects but has {len(rows)} boxes")
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    _check_boxes(boxes, width, height, where)
    return (width, height), boxes


def _pennfudan_records(images: Mapping[str, ImageSource], annotations: Mapping[str, bytes],
                       where: str, full: bool) -> list[ImageRecord]:
    """Pair `PNGImages/<stem>.png` with `Annotation/<stem>.txt` (both keyed by stem)."""
    for stem in sorted(set(images) ^ set(annotations)):
        missing = f"Annotation/{stem}.txt" if stem in images else f"PNGImages/{stem}.png"
        raise DataError(f"{where}: {missing} is missing")
    if not images:
        raise DataError(f"{where}: no images in PNGImages/")
    records = []
    for stem in sorted(images):
        ann = f"{where}/Annotation/{stem}.txt"
        try:
            text = annotations[stem].decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{ann}: not UTF-8 text ({e})") from e
        size, boxes = _parse_pennfudan(text, ann)
        _check_image(images[stem], f"{where}/PNGImages/{stem}.png", size, full)
        records.append(ImageRecord(stem, images[stem], boxes))
    return records


def _listdir(folder: Path, suffix: str) -> dict[str, Path]:
    """Files of `folder` by stem; any other non-hidden file is a DataError."""
    out = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.name in _JUNK or p.is_dir():
            continue
        if p.suffix.lower() != suffix:
            raise DataError(f"{p}: unexpected file, {folder.name}/ holds only {suffix} files")
        out[p.stem] = p
    return out


def read_pennfudan(root: Path) -> list[ImageRecord]:
    """Read `root/PNGImages/*.png` with `root/Annotation/*.txt` (PASCAL Annotation 1.00).

    Boxes `(Xmin, Ymin) - (Xmax, Ymax)` (1-based inclusive) become `(Xmin-1, Ymin-1, Xmax,
    Ymax)`; each must lie inside the annotated `W x H`, which must match the PNG header.
    Record names are file stems, sorted. Raises DataError for a missing folder, an image
    without annotation or vice versa, a malformed annotation or a bad box.
    """
    root = Path(root)
    for sub in ("PNGImages", "Annotation"):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: missing folder {sub}/")
    images = _listdir(root / "PNGImages", ".png")
    annotations = {k: p.read_bytes() for k, p in _listdir(root / "Annotation", ".txt").items()}
    return _pennfudan_records(images, annotations, str(root), full=False)


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got "
                        f"{type(value).__name__}")
    return value


def _coco_records(data: bytes, lookup: Callable[[str], ImageSource | None], where: str,
                  full: bool) -> list[ImageRecord]:
    """Build records from COCO JSON bytes; `lookup(file_name)` finds an image or None."""
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 ({e})") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise DataError(f"{where}: top level must be a JSON object")
    cats = doc.get("categories") or []
    if not isinstance(cats, list):
        raise DataError(f"{where}.categories: expected a list")
    cat_names = {_require(c, "id", int, f"{where}.categories[{i}]"):
                 str(_require(c, "name", str, f"{where}.categories[{i}]")).strip().lower()
                 for i, c in enumerate(cats)}
    keep = set(cat_names) if len(cat_names) <= 1 else \
        {k for k, v in cat_names.items() if v in _PEDESTRIAN_NAMES}
    if len(cat_names) > 1 and not keep:
        raise DataError(f"{where}.categories: several categories and none named person or "
                        "pedestrian")
    images: dict[int, tuple[str, int, int]] = {}
    for i, im in enumerate(_require(doc, "images", list, where)):
        at = f"{where}.images[{i}]"
        iid = _require(im, "id", int, at)
        fname = _require(im, "file_name", str, at)
        w, h = _require(im, "width", int, at), _require(im, "height", int, at)
        if w <= 0 or h <= 0:
            raise DataError(f"{at}: width and height must be positive")
        if iid in images:
            raise DataError(f"{at}: duplicate image id {iid}")
        images[iid] = (fname, w, h)
    rows: dict[int, list[list[float]]] = {iid: [] for iid in images}
    for i, ann in enumerate(doc.get("annotations") or []):
        at = f"{where}.annotations[{i}]"
        iid = _require(ann, "image_id", int, at)
        cid = _require(ann, "category_id", int, at) if cat_names else None
        if iid not in images:
            raise DataError(f"{at}: unknown image_id {iid}")
        if cid is not None and cid not in cat_names:
            raise DataError(f"{at}: unknown category_id {cid}")
        bbox = _require(ann, "bbox", list, at)
        if len(bbox) != 4 or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in bbox):
            raise DataError(f"{at}.bbox: expected 4 numbers [x, y, w, h], got {bbox}")
        if (cid is None or cid in keep) and not ann.get("iscrowd"):
            x, y, bw, bh = (float(v) for v in bbox)
            rows[iid].append([x, y, x + bw, y + bh])
    records: dict[str, ImageRecord] = {}
    for iid, (fname, w, h) in images.items():
        path = PurePosixPath(fname.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise DataError(f"{where}: image file_name {fname!r} must be a relative path")
        source = lookup(path.as_posix())
        if source is None:
            raise DataError(f"{where}: image file {fname!r} (id {iid}) not found")
        name = path.with_suffix("").as_posix()
        if name in records:
            raise DataError(f"{where}: two images named {name!r}")
        boxes = torch.tensor(rows[iid], dtype=torch.float32).reshape(-1, 4)
        _check_boxes(boxes, w, h, f"{where}: image {fname!r}")
        _check_image(source, f"{where}: image {fname!r}", (w, h), full)
        records[name] = ImageRecord(name, source, boxes)
    return [records[k] for k in sorted(records)]


def read_coco(annotations: Path | bytes, images: Path | Mapping[str, bytes]
              ) -> list[ImageRecord]:
    """Read a COCO detection file: `annotations` is the JSON file (path or bytes).

    `images` is the folder that `file_name`s are relative to, or a mapping file_name -> bytes.
    With one category (or none) every box is a pedestrian, otherwise only the categories
    named "person" / "pedestrian"; `iscrowd` boxes are dropped. `bbox` [x, y, w, h] becomes
    x1y1x2y2 (COCO is already 0-based continuous). Record names are `file_name` without
    suffix, sorted. Raises DataError for non-UTF-8 / invalid JSON, missing keys, unknown
    ids, missing images, image sizes other than declared, or boxes outside their image.
    """
    where = str(annotations) if isinstance(annotations, Path) else "annotations.json"
    if isinstance(annotations, Path):
        if not annotations.is_file():
            raise DataError(f"{where}: file not found")
        annotations = annotations.read_bytes()
    if isinstance(images, Path):
        folder = images
        return _coco_records(annotations, lambda f: p if (p := folder / f).is_file() else None,
                             where, full=False)
    return _coco_records(annotations, lambda f: images.get(f), where, full=True)


def read_dataset_dir(root: Path) -> list[ImageRecord]:
    """Read a dataset folder: Penn-Fudan if it has `PNGImages/` and `Annotation/`, COCO if it
    has `annotations.json` (file_names relative to `root` or to `root/images`).
    Raises DataError for any other layout."""
    root = Path(root)
    if (root / "PNGImages").is_dir() and (root / "Annotation").is_dir():
        return read_pennfudan(root)
    if (root / "annotations.json").is_file():
        def lookup(f: str) -> Path | None:
            return next((p for p in (root / f, root / "images" / f) if p.is_file()), None)
        return _coco_records((root / "annotations.json").read_bytes(), lookup,
                             str(root / "annotations.json"), full=False)
    raise DataError(f"{root}: unknown dataset layout (expected PNGImages/ + Annotation/ "
                    "or annotations.json)")


# Images barely compress and annotations a few times; a large entry that inflates more than
# this is a bomb, refused before it is read (so a dataset holds about as much memory as its zip).
MAX_COMPRESSION_RATIO = 100
_RATIO_CHECK_BYTES = 1 << 20


def read_dataset_zip(data: bytes, *, max_files: int = 10_000, max_uncompressed_bytes: int = 2_000_000_000,
                     max_entry_bytes: int = 64 * 2**20) -> list[ImageRecord]:
    """Read a zip of either layout fully in memory (nothing is extracted to disk).

    The layout may sit at the top of the zip or under one top-level folder
    (`PennFudanPed/PNGImages/...`). Image records hold the image bytes, and every image is
    fully decoded once to validate it. Raises DataError for a corrupt zip (bad structure,
    CRC errors, encryption), entries with `..` or absolute names, symlinks, more than
    `max_files` entries, more than `max_uncompressed_bytes` declared or actually inflated,
    an entry declaring more than `max_entry_bytes` or a large entry inflating more than
    MAX_COMPRESSION_RATIO times (both refused before they are read), and everything the
    layout readers reject.
    """
    where = "upload.zip"
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{where}: not a valid zip file ({e})") from e
    if len(infos) > max_files:
        raise DataError(f"{where}: {len(infos)} entries, more than the limit of {max_files}")
    if sum(i.file_size for i in infos) > max_uncompressed_bytes:
        raise DataError(f"{where}: uncompressed size exceeds {max_uncompressed_bytes} bytes")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise DataError(f"{where}: unsafe entry name {info.filename!r}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{where}: entry {info.filename!r} is a symbolic link")
        if info.is_dir() or name.startswith(_JUNK[0]) or parts[-1] in _JUNK \
                or parts[-1].startswith("._"):
            continue
        if info.file_size > max_entry_bytes:
            raise DataError(f"{where}: {info.filename!r} declares {info.file_size} bytes, over the limit of "
                            f"{max_entry_bytes} per file")
        if info.file_size > _RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
            raise DataError(f"{where}: {info.filename!r} inflates {info.file_size / max(1, info.compress_size):.0f}x "
                            f"(over {MAX_COMPRESSION_RATIO}x: a zip bomb, not images or annotations)")
        members[name] = info

    def read(name: str) -> bytes:  # capped: a header that lies cannot inflate more
        info = members[name]
        try:
            with zf.open(info) as f:
                blob = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, RuntimeError,
                NotImplementedError) as e:
            raise DataError(f"{where}: cannot read {name} ({e})") from e
        if len(blob) != info.file_size:
            raise DataError(f"{where}: {name} is not the size its header declares")
        return blob

    tops = {n.split("/", 1)[0] for n in members}
    prefix = ""
    markers = ("PNGImages", "Annotation", "annotations.json")
    if len(tops) == 1 and all("/" in n for n in members) and not tops & set(markers):
        prefix = tops.pop() + "/"
    files = {n[len(prefix):]: n for n in members}
    dirs = {n.split("/", 1)[0] for n in files if "/" in n}
    if {"PNGImages", "Annotation"} <= dirs:
        images: dict[str, ImageSource] = {}
        annotations: dict[str, bytes] = {}
        for rel, full_name in files.items():
            folder, _, base = rel.partition("/")
            folders: dict[str, tuple[dict[str, Any], str]] = {"PNGImages": (images, ".png"),
                                                              "Annotation": (annotations, ".txt")}
            if folder not in folders:
                continue
            target, suffix = folders[folder]
            if "/" in base or PurePosixPath(base).suffix.lower() != suffix:
                raise DataError(f"{where}: unexpected file {full_name}, {folder}/ holds only "
                                f"{suffix} files")
            target[PurePosixPath(base).stem] = read(full_name)
        return _pennfudan_records(images, annotations, f"{where}/{prefix}".rstrip("/"),
                                  full=True)
    if "annotations.json" in files:
        def lookup(f: str) -> bytes | None:
            rel = next((r for r in (f, "images/" + f) if r in files), None)
            return None if rel is None else read(files[rel])
        return _coco_records(read(files["annotations.json"]), lookup,
                             f"{where}/{prefix}annotations.json", full=True)
    raise DataError(f"{where}: unknown dataset layout (expected PNGImages/ + Annotation/ or "
                    "annotations.json)")
