"""core.data: image decoding, Penn-Fudan / COCO / zip readers, fixed split, dataset."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.data import (
    DataError,
    DetectionDataset,
    collate_detection,
    eval_transforms,
    load_image,
    read_coco,
    read_dataset_dir,
    read_dataset_zip,
    read_pennfudan,
    split_records,
    train_transforms,
)
from core.paths import default_data_dir

DATA = default_data_dir()
NAMES = ["FudanPed00001", "FudanPed00002", "PennPed00010"]


@pytest.fixture(scope="module")
def records():
    return read_pennfudan(DATA)


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_zip(files: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def pennfudan_files(prefix: str = "PennFudanPed/") -> dict[str, bytes]:
    files = {}
    for n in NAMES:
        files[f"{prefix}PNGImages/{n}.png"] = (DATA / "PNGImages" / f"{n}.png").read_bytes()
        files[f"{prefix}Annotation/{n}.txt"] = (DATA / "Annotation" / f"{n}.txt").read_bytes()
    return files


def coco_doc(records) -> dict:
    images, anns = [], []
    for i, r in enumerate(records):
        w, h = Image.open(r.image).size
        images.append({"id": i, "file_name": f"{r.name}.png", "width": w, "height": h})
        anns += [{"id": len(anns), "image_id": i, "category_id": 1,
                  "bbox": [x1, y1, x2 - x1, y2 - y1]} for x1, y1, x2, y2 in r.boxes.tolist()]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person"}]}


# --- load_image ---------------------------------------------------------------------

def test_load_image_real(records):
    img = load_image(records[0].image)
    assert img.dtype == torch.float32 and img.shape == (3, 536, 559)
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.5
    assert torch.equal(load_image(records[0].image.read_bytes()), img)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "1"])
def test_load_image_modes_become_rgb(mode):
    img = load_image(png_bytes(Image.new("RGB", (7, 5), (255, 0, 0)).convert(mode)))
    assert img.shape == (3, 5, 7) and 0.0 <= img.min() and img.max() <= 1.0


def test_load_image_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    blob = png_bytes(Image.new("RGB", (40, 20), "white"), "JPEG", exif=exif.tobytes())
    assert load_image(blob).shape == (3, 40, 20)


def test_load_image_errors(tmp_path, records):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="up.png"):
        load_image(b"this is not an image", name="up.png")
    blob = records[0].image.read_bytes()
    with pytest.raises(DataError, match="truncated"):
        load_image(blob[: len(blob) // 2], name="half.png")
    with pytest.raises(DataError, match="exceeds"):
        load_image(blob, max_pixels=1000)


def test_load_image_refuses_decompression_bomb():
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 1e10 px RGB
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(DataError, match="too large|exceeds"):
        load_image(bomb, max_pixels=10**12)
    with pytest.raises(DataError, match="exceeds"):
        load_image(bomb)


# --- Penn-Fudan ---------------------------------------------------------------------

def test_read_pennfudan(records):
    assert len(records) == 130 and sum(len(r.boxes) for r in records) == 321
    assert [r.name for r in records] == sorted(r.name for r in records)
    first = records[0]
    assert first.name == "FudanPed00001" and first.image == DATA / "PNGImages/FudanPed00001.png"
    # (160, 182) - (302, 431) and (420, 171) - (535, 486), 1-based inclusive
    assert first.boxes.tolist() == [[159, 181, 302, 431], [419, 170, 535, 486]]
    assert first.boxes.dtype == torch.float32
    assert read_dataset_dir(DATA)[0].name == "FudanPed00001"


def _small_copy(tmp_path: Path) -> Path:
    for sub in ("PNGImages", "Annotation"):
        (tmp_path / sub).mkdir()
    for n in NAMES[:2]:
        shutil.copy(DATA / "PNGImages" / f"{n}.png", tmp_path / "PNGImages")
        shutil.copy(DATA / "Annotation" / f"{n}.txt", tmp_path / "Annotation")
    return tmp_path


def test_read_pennfudan_errors(tmp_path):
    root = _small_copy(tmp_path)
    assert [r.name for r in read_pennfudan(root)] == NAMES[:2]
    ann = root / "Annotation" / "FudanPed00001.txt"
    text = ann.read_text()
    ann.write_text(text.replace("(420, 171) - (535, 486)", "(420, 171) - (560, 486)"))
    with pytest.raises(DataError, match=r"FudanPed00001\.txt.*box 1.*outside"):
        read_pennfudan(root)
    ann.write_text(text.replace("(420, 171) - (535, 486)", "(420, 171) - (410, 486)"))
    with pytest.raises(DataError, match="no positive size"):
        read_pennfudan(root)
    ann.write_text(text.replace("(420, 171) - (535, 486)", "(420, 171) - (535 486)"))
    with pytest.raises(DataError, match="malformed"):
        read_pennfudan(root)
    ann.write_text(text.replace("559 x 536 x 3", "600 x 536 x 3"))
    with pytest.raises(DataError, match="image is 559x536"):
        read_pennfudan(root)
    ann.unlink()
    with pytest.raises(DataError, match=r"Annotation/FudanPed00001\.txt is missing"):
        read_pennfudan(root)
    with pytest.raises(DataError, match="unknown dataset layout"):
        read_dataset_dir(root / "PNGImages")


# --- COCO ---------------------------------------------------------------------------

def test_read_coco(tmp_path, records):
    subset = records[:3]
    doc = coco_doc(subset)
    got = read_coco(json.dumps(doc).encode(), {f"{r.name}.png": r.image.read_bytes()
                                               for r in subset})
    assert [r.name for r in got] == [r.name for r in subset]
    for a, b in zip(got, subset, strict=True):
        assert torch.equal(a.boxes, b.boxes) and isinstance(a.image, bytes)
    # on disk, with several categories: only "person" boxes are kept
    doc["categories"].append({"id": 2, "name": "car"})
    doc["annotations"].append({"id": 99, "image_id": 0, "category_id": 2, "bbox": [0, 0, 5, 5]})
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    for r in subset:
        shutil.copy(r.image, tmp_path)
    got = read_dataset_dir(tmp_path)
    assert [len(r.boxes) for r in got] == [len(r.boxes) for r in subset]


def test_read_coco_errors(records):
    doc = coco_doc(records[:1])
    images = {"FudanPed00001.png": records[0].image.read_bytes()}
    with pytest.raises(DataError, match="not UTF-8"):
        read_coco(json.dumps(doc).encode("utf-16"), images)
    with pytest.raises(DataError, match="invalid JSON"):
        read_coco(b'{"images": [', images)
    with pytest.raises(DataError, match="not found"):
        read_coco(json.dumps(doc).encode(), {})
    doc["annotations"][0]["bbox"] = [500, 100, 100, 100]
    with pytest.raises(DataError, match="outside"):
        read_coco(json.dumps(doc).encode(), images)
    doc["annotations"][0]["image_id"] = 7
    with pytest.raises(DataError, match=r"annotations\[0\]: unknown image_id 7"):
        read_coco(json.dumps(doc).encode(), images)


# --- zip uploads --------------------------------------------------------------------

def test_read_zip_pennfudan(records):
    by_name = {r.name: r for r in records}
    for prefix in ("PennFudanPed/", ""):
        got = read_dataset_zip(make_zip(pennfudan_files(prefix) | {"__MACOSX/._x": b"junk"}))
        assert [r.name for r in got] == NAMES
        for r in got:
            assert isinstance(r.image, bytes) and torch.equal(r.boxes, by_name[r.name].boxes)


def test_read_zip_coco(records):
    subset = [r for r in records if r.name in NAMES]
    files = {f"ds/images/{r.name}.png": r.image.read_bytes() for r in subset}
    files["ds/annotations.json"] = json.dumps(coco_doc(subset)).encode()
    assert [r.name for r in read_dataset_zip(make_zip(files))] == NAMES
    files["ds/annotations.json"] = "{\"images\": \"\xe9\"}".encode("latin-1")
    with pytest.raises(DataError, match="not UTF-8"):
        read_dataset_zip(make_zip(files))


def _patch_sizes(blob: bytes, size: int) -> bytes:
    """Make every header declare `size` uncompressed bytes (a lying zip)."""
    out = bytearray(blob)
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = out.find(sig)
        while pos >= 0:
            out[pos + offset: pos + offset + 4] = struct.pack("<I", size)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def test_read_zip_rejects_bad_uploads():
    good = pennfudan_files()
    png = good["PennFudanPed/PNGImages/FudanPed00001.png"]
    cases = {
        "not a valid zip": b"PK\x03\x04 definitely not a zip",
        "not a valid zip ": make_zip(good)[:-200],
        "unsafe entry": make_zip(good | {"../evil.png": png}),
        "unsafe entry ": make_zip(good | {"/abs/evil.png": png}),
        "symbolic link": make_zip(good, symlinks=("PennFudanPed/PNGImages/link.png",)),
        "unexpected file": make_zip(good | {"PennFudanPed/PNGImages/readme.txt": b"hi"}),
        "PNGImages/notes.png: not a readable image": make_zip(
            good | {"PennFudanPed/PNGImages/notes.png": b"hello",
                    "PennFudanPed/Annotation/notes.txt": good[
                        "PennFudanPed/Annotation/FudanPed00001.txt"]}),
        "FudanPed00001.png: corrupt or truncated": make_zip(
            good | {"PennFudanPed/PNGImages/FudanPed00001.png": png[: len(png) // 2]}),
        "box 1 .* outside": make_zip(good | {
            "PennFudanPed/Annotation/FudanPed00001.txt": good[
                "PennFudanPed/Annotation/FudanPed00001.txt"].replace(b"(535, 486)",
                                                                     b"(535, 999)")}),
        "Annotation/FudanPed00002.txt is missing": make_zip(
            {k: v for k, v in good.items() if not k.endswith("FudanPed00002.txt")}),
        "unknown dataset layout": make_zip({"a/b.png": png}),
        "not the size its header declares|Bad CRC": _patch_sizes(
            make_zip({"annotations.json": b" " * 10_000}), 100),
    }
    for message, blob in cases.items():
        with pytest.raises(DataError, match=message.strip()):
            read_dataset_zip(blob)
    with pytest.raises(DataError, match="more than the limit"):
        read_dataset_zip(make_zip(good), max_files=3)
    with pytest.raises(DataError, match="uncompressed size exceeds"):
        read_dataset_zip(make_zip(good), max_uncompressed_bytes=len(png))
    with pytest.raises(DataError, match=r"inflates \d+x \(over 100x: a zip bomb"):
        read_dataset_zip(make_zip(good | {"PennFudanPed/Annotation/zeros.txt": b"\0" * (4 << 20)}))
    with pytest.raises(DataError, match="over the limit of 100 per file"):
        read_dataset_zip(make_zip(good), max_entry_bytes=100)
    assert read_dataset_zip(make_zip(good), max_entry_bytes=max(map(len, good.values())))  # the limit is inclusive


def test_read_zip_detects_crc_error():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("annotations.json", b'{"images": [], "annotations": []}')
    blob = bytearray(buf.getvalue())
    blob[blob.find(b'"images"') + 2] ^= 0x01  # flip a bit in the stored data
    with pytest.raises(DataError, match="CRC"):
        read_dataset_zip(bytes(blob))


# --- split --------------------------------------------------------------------------

def test_split_is_fixed(records):
    train, val = split_records(records)
    assert (len(train), len(val)) == (98, 32)
    names = [r.name for r in val]
    assert names == sorted(names) and not set(names) & {r.name for r in train}
    assert names[:4] == ["FudanPed00001", "FudanPed00007", "FudanPed00008", "FudanPed00009"]
    digest = hashlib.sha1(",".join(names).encode()).hexdigest()
    assert digest == VAL_DIGEST
    # independent of input order and of the other records
    train2, val2 = split_records(list(reversed(records)))
    assert [r.name for r in val2] == names and [r.name for r in train2] == [
        r.name for r in train]
    with pytest.raises(ValueError):
        split_records(records, val_fraction=1.5)


VAL_DIGEST = "04f571e1f6d66c73502ca1f25b6ec8a4a522f4eb"  # sha1 of the 32 comma-joined names


# --- dataset and transforms ---------------------------------------------------------

def test_dataset_and_transforms(records):
    ds = DetectionDataset(records[:4], eval_transforms())
    image, target = ds[0]
    assert type(image) is torch.Tensor and image.shape == (3, 536, 559)
    assert torch.equal(target["boxes"], records[0].boxes)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 1]
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == len(targets) == 2
    torch.manual_seed(0)
    aug = DetectionDataset(records[:4], train_transforms())
    for i in range(12):
        image, target = aug[i % 4]
        _, h, w = image.shape
        boxes = target["boxes"]
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and min(h, w) > 100
        assert type(boxes) is torch.Tensor and boxes.shape[1] == 4
        assert len(boxes) == len(target["labels"])
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
