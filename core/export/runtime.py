"""Run an exported FlexBin detector with plain OpenVINO: pre-processing, inference, post-processing.

Needs only numpy, Pillow and openvino: no torch, no FlexBin. This file is copied into every
OpenVINO zip as `flexbin_detect.py` (`GET /checkpoints/{id}/download?format=openvino`), and
FlexBin's own OpenVINO serving backend runs the same code, so what a user runs on an edge box
is what the service measured.

    python flexbin_detect.py <unzipped folder> image1.png image2.jpg   # JSON detections

The zip's `card.json` has an `export` section that says how to feed the model:

- input `image`: float32 [N, 3, H, W], RGB in [0, 1] (NCHW); the file's static shape is
  [1, 3, S, S]. `resize: "longer_side"`: each image is resized (bilinear, half-pixel centres, no
  antialiasing: what `torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)`
  does) so its longer side is S; `resize: "stretch"`: to S x S, or to `height` x `width` where
  the spec gives them (aspect ratio not kept; with `antialias: true` the resize is torch's
  antialiased bilinear, `interpolate(..., antialias=True)`, as pedestrian_adas_0002 resizes:
  its file's shape is then [1, 3, height, width]). The images are placed top-left
  on one canvas padded bottom/right with `pad_value`: S x S (`canvas: "fixed"`), or the
  smallest multiple of `canvas` (an int) holding the batch, as PedNet pads its batches; reshape
  the model to that shape (`Detector` runs one image at a time on its own canvas by default).
  The network normalises inside the graph.
- `postprocess.kind == "centernet"` (FlexBin's PedNet): outputs `heatmap` [N, 1, H/16, W/16]
  (pedestrian-centre probability, already 0 where a 3x3 max-pool says a cell is not a local
  peak) and `regression` [N, 4, H/16, W/16] (dx, dy, log w, log h per cell, in stride units).
  A cell (iy, ix) with score p decodes to the centre ((ix + dx)·16, (iy + dy)·16) and size
  (exp(log w)·16, exp(log h)·16) on the canvas; the best `detections_per_img` cells above
  `score_thresh` are kept, mapped back to the image (divided by the resize scale, clipped to the
  image) and suppressed by greedy NMS at IoU > `nms_thresh`.
- `postprocess.kind == "detections"` (the torchvision detectors and pedestrian_adas_0002, whole
  detector in the graph after the resize, NMS included, batch 1): outputs `boxes` [K, 4] x1, y1,
  x2, y2 in canvas pixels, `scores` [K], `labels` [K]; only the mapping back to the image remains.
- `postprocess.kind == "detection_output"` (pedestrian_adas_0002 since issue 19: the network and
  OpenVINO's DetectionOutput, as Intel's IR of that detector): output `detections` [1, 1, K, 7],
  one row per detection (image id, label, score, x1, y1, x2, y2) with the box normalised to the
  network input (multiply by its width / height for canvas pixels), best first per label; the
  list ends at the first row whose image id is -1 (rows after it are padding).

Boxes come out as x1, y1, x2, y2 in pixels of the image as given, best first.
"""
from __future__ import annotations

import functools
import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

CANVAS_STRIDE = 16  # PedNet's output stride (CenterNet head)


@dataclass
class Detections:
    """One image's detections, best first: boxes float32 [K, 4] x1, y1, x2, y2 in that image's
    pixels, scores float32 [K]."""

    boxes: np.ndarray
    scores: np.ndarray


@dataclass
class Prepared:
    """An image resized for the model: `image` float32 [3, h, w], and the per-axis factors that
    took the original image's pixels to these."""

    image: np.ndarray
    scale_x: float
    scale_y: float
    width: int
    height: int


# -- pre-processing -------------------------------------------------------------------
def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices and the weight of the second, as torch's
    bilinear upsampling computes them with align_corners=False (half-pixel centres, the
    source coordinate clamped at 0, no antialiasing)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [C, H, W] -> [C, height, width], bilinear as torch's
    `interpolate(mode="bilinear", align_corners=False)` (results agree to float rounding)."""
    _, h, w = image.shape
    if (h, w) == (height, width):
        return image.astype(np.float32, copy=True)
    y0, y1, ly = _source_index(height, h)
    x0, x1, lx = _source_index(width, w)
    rows = image[:, y0, :] * (1 - ly)[None, :, None] + image[:, y1, :] * ly[None, :, None]
    out: np.ndarray = (rows[:, :, x0] * (1 - lx)[None, None, :] + rows[:, :, x1] * lx[None, None, :]).astype(np.float32)
    return out


@lru_cache(maxsize=64)  # serving sees the same few image sizes again and again
def _antialias_weights(out_size: int, in_size: int) -> np.ndarray:
    """float32 [out_size, in_size]: the triangle-filter weights of torch's antialiased bilinear
    resize (`_upsample_bilinear2d_aa`, align_corners=False): the filter widens with the
    downscaling factor, and each row is normalised to sum to 1."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    inv = 1.0 / support
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * inv))
        total = w.sum()
        weights[i, lo:hi] = w / total if total > 0 else w
    return weights.astype(np.float32)


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [C, H, W] -> [C, height, width], as torch's
    `interpolate(mode="bilinear", align_corners=False, antialias=True)` (to float rounding)."""
    _, h, w = image.shape
    if (h, w) == (height, width):
        return image.astype(np.float32, copy=True)
    wy, wx = _antialias_weights(height, h), _antialias_weights(width, w)
    out: np.ndarray = np.einsum("yh,chw,xw->cyx", wy, image.astype(np.float32), wx, optimize=True)
    return out.astype(np.float32)


def _input_hw(source: dict[str, Any]) -> tuple[int, int]:
    size = int(source["size"])
    return int(source.get("height", size)), int(source.get("width", size))


def compile_config(threads: int, precision: str | None = "f32") -> dict[str, Any]:
    """OpenVINO CPU settings the detector is compiled with: f32 (results equal to PyTorch's) or,
    with precision None, OpenVINO's default for the CPU (bf16 on CPUs with AMX / AVX-512 BF16)."""
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


def prepare(image: np.ndarray, spec: dict[str, Any]) -> Prepared:
    """An RGB float32 [3, H, W] image in [0, 1] resized as the model expects (module docstring)."""
    source = spec["input"]
    size = int(source["size"])
    _, h, w = image.shape
    if source["resize"] == "stretch":
        height, width = _input_hw(source)
        resize = resize_antialiased if source.get("antialias") else resize_bilinear
        return Prepared(resize(image, height, width), width / w, height / h, w, h)
    scale = size / max(h, w)
    # Python's round (half to even), as PedNet rounds its resized size
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return Prepared(resize_bilinear(image, nh, nw), scale, scale, w, h)


def canvas_batch(prepared: Sequence[Prepared], spec: dict[str, Any]) -> np.ndarray:
    """float32 [N, 3, H, W]: the images top-left on one canvas, padded bottom/right with
    `pad_value`. `canvas: "fixed"`: H = W = size; `canvas: <m>` (an int): the smallest multiple
    of m holding every image of the batch, as PedNet pads a batch."""
    source = spec["input"]
    if source["canvas"] == "fixed":
        height, width = _input_hw(source)
    else:
        m = int(source["canvas"])
        height = -(-max(p.image.shape[1] for p in prepared) // m) * m
        width = -(-max(p.image.shape[2] for p in prepared) // m) * m
    batch = np.empty((len(prepared), 3, height, width), dtype=np.float32)
    batch[:] = np.asarray(source["pad_value"], dtype=np.float32)[None, :, None, None]
    for i, p in enumerate(prepared):
        batch[i, :, :p.image.shape[1], :p.image.shape[2]] = p.image
    return batch


def load_image(path: str | Path) -> np.ndarray:
    """RGB float32 [3, H, W] in [0, 1] of an image file, EXIF orientation applied."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    return rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


# -- post-processing ------------------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first: a box is dropped when its IoU
    with a kept, higher-scoring box exceeds `iou_threshold` (as torchvision.ops.nms)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, np.float32(1e-12))
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _to_image(boxes: np.ndarray, prepared: Prepared) -> np.ndarray:
    boxes = boxes.astype(np.float32, copy=True)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2] / np.float32(prepared.scale_x), 0, prepared.width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2] / np.float32(prepared.scale_y), 0, prepared.height)
    return boxes


def decode_centernet(heatmap: np.ndarray, regression: np.ndarray, prepared: Prepared,
                     post: dict[str, Any]) -> Detections:
    """One image's `heatmap` [1, h, w] and `regression` [4, h, w] -> detections (module docstring)."""
    flat = heatmap[0].reshape(-1)
    gw = heatmap.shape[-1]
    k = min(int(post["detections_per_img"]), flat.size)
    idx = np.argsort(-flat, kind="stable")[:k]
    scores = flat[idx]
    keep = scores > np.float32(post["score_thresh"])
    idx, scores = idx[keep], scores[keep]
    iy, ix = (idx // gw).astype(np.float32), (idx % gw).astype(np.float32)
    r = regression.reshape(4, -1)[:, idx]
    stride = np.float32(post.get("stride", CANVAS_STRIDE))
    cx, cy = (ix + r[0]) * stride, (iy + r[1]) * stride
    bw = np.exp(np.minimum(r[2], np.float32(8))) * stride
    bh = np.exp(np.minimum(r[3], np.float32(8))) * stride
    boxes = _to_image(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), prepared)
    kept = nms(boxes, scores, float(post["nms_thresh"]))
    return Detections(boxes[kept], scores[kept].astype(np.float32))


def decode_detection_output(rows: np.ndarray, prepared: Prepared, spec: dict[str, Any], image: int = 0) -> Detections:
    """DetectionOutput's [1, 1, K, 7] rows -> one image's detections (module docstring)."""
    rows = rows.reshape(-1, 7)
    end = np.flatnonzero(rows[:, 0] == -1)
    rows = rows[:end[0] if end.size else len(rows)]
    rows = rows[rows[:, 0] == image]
    height, width = _input_hw(spec["input"])
    boxes = rows[:, 3:7] * np.array([width, height, width, height], dtype=np.float32)
    return decode_detections(boxes, rows[:, 2], prepared)


def decode_detections(boxes: np.ndarray, scores: np.ndarray, prepared: Prepared) -> Detections:
    order = np.argsort(-scores, kind="stable")
    return Detections(_to_image(boxes[order].reshape(-1, 4), prepared), scores[order].astype(np.float32))


# -- the runtime ----------------------------------------------------------------------
class Detector:
    """An exported FlexBin detector on OpenVINO's CPU plugin: compiled once per input shape
    (at most `max_compiled` kept, least recently used dropped), `threads` inference threads.

    `precision`: "f32" (default: what the job measured; the exported thresholds and parity depend
    on it), "bf16", or "auto": each shape is compiled at both and the faster one kept (timed on a
    few inferences when compiled; f32 where the CPU has no bf16 arithmetic). Neither wins
    everywhere: bf16 halved pedestrian_adas_0002's float forward on a Xeon with AMX and was
    slower than f32 on one with AVX-512 alone."""

    def __init__(self, xml: str | bytes, weights: bytes, card: dict[str, Any], *, threads: int = 1,
                 max_compiled: int = 8, device: str = "CPU", precision: str = "f32") -> None:
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(model=xml, weights=weights)
        self.card = card
        self.spec = card["export"]
        self.threads = threads
        self.device = device
        self.max_compiled = max_compiled
        if precision not in ("f32", "bf16", "auto"):
            raise ValueError(f"precision must be f32, bf16 or auto, not {precision!r}")
        self.precision = precision
        self.chosen: dict[tuple[int, ...], str] = {}  # the precision each compiled shape runs at
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    @classmethod
    def from_zip(cls, data: bytes, **kwargs: Any) -> Detector:
        """From the bytes of a FlexBin OpenVINO zip (model.xml, model.bin, card.json)."""
        import io
        import zipfile

        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                xml, weights, card = zf.read("model.xml"), zf.read("model.bin"), json.loads(zf.read("card.json"))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ValueError(f"not a FlexBin OpenVINO zip: {exc}") from None
        return cls(xml, weights, card, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs: Any) -> Detector:
        folder = Path(folder)
        return cls((folder / "model.xml").read_bytes(), (folder / "model.bin").read_bytes(),
                   json.loads((folder / "card.json").read_text()), **kwargs)

    @property
    def max_batch(self) -> int | None:
        """Images per inference: None (any) or 1 (the whole-detector graphs)."""
        value = self.spec["input"].get("max_batch")
        return None if value is None else int(value)

    def compiled(self, shape: Sequence[int]) -> Any:
        """The model compiled for an input of `shape` [N, 3, H, W] (reshaped from the exported
        static shape: 1-bit convolutions need static shapes)."""
        key = tuple(int(s) for s in shape)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        model = self.model
        if list(key) != list(self.spec["input"]["shape"]):
            model = model.clone()
            model.reshape({self.spec["input"]["name"]: list(key)})
        compiled, self.chosen[key] = self._compile(model, key)
        self._compiled[key] = compiled
        while len(self._compiled) > self.max_compiled:
            self._compiled.popitem(last=False)
        return compiled

    def _compile(self, model: Any, shape: tuple[int, ...]) -> tuple[Any, str]:
        """(compiled model, its precision): the configured one, or the faster of f32 and bf16."""
        candidates = [self.precision] if self.precision != "auto" else ["f32"]
        if self.precision == "auto" and "BF16" in self.core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"):
            candidates.append("bf16")
        compiled = {p: self.core.compile_model(model, self.device, compile_config(self.threads, p)) for p in candidates}
        if len(compiled) == 1:
            return compiled[candidates[0]], candidates[0]
        canvas = np.zeros(shape, dtype=np.float32)
        times = {p: median_forward_ms(functools.partial(c, canvas), warmup=2, budget_s=0.3) for p, c in compiled.items()}
        best = min(times, key=times.__getitem__)
        return compiled[best], best

    def infer(self, canvases: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs by name for a float32 [N, 3, H, W] batch (`canvas_batch`)."""
        compiled = self.compiled(canvases.shape)
        return outputs_by_name(compiled, compiled(canvases), self.spec)

    def detect(self, images: Sequence[np.ndarray], *, together: bool = False) -> list[Detections]:
        """Detections for RGB float32 [3, H, W] images in [0, 1] of any sizes.

        together=False: one image per inference, each on its own canvas, so an image's detections
        never depend on the images it arrives with (PyTorch's PedNet run on that image alone),
        and the compiled shapes are only the canvases that occur. together=True: one batch on a
        common canvas, as PyTorch runs a list of images (`core.train.evaluate_model`)."""
        prepared = [prepare(image, self.spec) for image in images]
        post = self.spec["postprocess"]
        step = (self.max_batch or len(prepared) or 1) if together else 1
        out: list[Detections] = []
        for start in range(0, len(prepared), step):
            chunk = prepared[start:start + step]
            raw = self.infer(canvas_batch(chunk, self.spec))
            for i, p in enumerate(chunk):
                out.append(self._decode(raw, i, p, post))
        return out

    def _decode(self, raw: dict[str, np.ndarray], i: int, prepared: Prepared, post: dict[str, Any]) -> Detections:
        return decode(raw, i, prepared, self.spec)


def outputs_by_name(compiled: Any, result: Any, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """A compiled model's raw outputs by the spec's names. A port whose tensor lost its name in the
    IR round trip (seen on the torchvision graphs) is named by position: OpenVINO keeps the order
    of a model's results."""
    names = spec["outputs"]
    return {next((n for n in names if n in out.get_names()), names[i]): np.asarray(result[out])
            for i, out in enumerate(compiled.outputs)}


def decode(raw: dict[str, np.ndarray], i: int, prepared: Prepared, spec: dict[str, Any]) -> Detections:
    """Image `i` of a batch's raw outputs -> its detections, by the spec's post-processing."""
    post = spec["postprocess"]
    if post["kind"] == "detection_output":
        return decode_detection_output(raw["detections"], prepared, spec, i)
    if post["kind"] == "centernet":
        return decode_centernet(raw["heatmap"][i], raw["regression"][i], prepared, post)
    if post["kind"] == "detections":
        return decode_detections(raw["boxes"], raw["scores"], prepared)
    raise ValueError(f"unknown postprocess kind {post['kind']!r}")


def median_forward_ms(infer: Callable[[], Any], *, warmup: int = 3, budget_s: float = 1.0,
                      max_runs: int = 50) -> float:
    """Median wall time of `infer()` in milliseconds: `warmup` untimed runs, then timed runs
    until `budget_s` has passed (at least 5, at most `max_runs`)."""
    import time

    for _ in range(warmup):
        infer()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (len(times) < 5 or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        infer()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1] if __doc__ else "", file=sys.stderr)
        print("usage: python flexbin_detect.py <folder with model.xml, model.bin, card.json> IMAGE...",
              file=sys.stderr)
        return 2
    detector = Detector.from_folder(argv[0])
    results = []
    for path in argv[1:]:
        image = load_image(path)
        (det,) = detector.detect([image])
        results.append({"filename": str(path), "width": image.shape[2], "height": image.shape[1],
                        "detections": [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 5)}
                                       for box, s in zip(det.boxes, det.scores)]})
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
