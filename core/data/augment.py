"""Training augmentation at the network's resolution (issue 18): box arithmetic, one
crop-and-resize per sample, and a batched photometric distortion on the training device.

It keeps the statistical meaning of the torchvision v2 pipeline it replaces
(`core.data.transforms.train_transforms`, which the old training loop ran per sample on
full-resolution images in the main process):

- zoom-out, p=0.3: canvas up to 1.5x each side, the image at a random offset, mean-gray fill
  (0.5); same draws as `v2.RandomZoomOut(side_range=(1.0, 1.5))`;
- IoU crop, p=0.5: `v2.RandomIoUCrop(min_scale=0.5)`'s semantics exactly (an overlap option
  out of {0, 0.1, 0.3, 0.5, 0.7, 0.9, none}, up to 40 trials of a crop keeping at least half of
  each side with aspect ratio in [0.5, 2], at least one box centre inside and one box at that
  IoU with the crop; boxes whose centre falls outside are dropped, the others clipped);
- horizontal flip, p=0.5;
- boxes clipped to the image and dropped below 2 px of width or height (`SanitizeBoundingBoxes
  (min_size=2)`), measured as before in pixels of the original image;
- photometric distortion, each of brightness (0.875-1.125), contrast (0.5-1.5, before or after
  saturation and hue), saturation (0.5-1.5), hue (+-0.05) and a channel permutation with p=0.5
  (`v2.RandomPhotometricDistort`'s ranges, order and formulas).

What changed, and why it does not change what the network learns from:

- All geometry is drawn in the original image's pixels (so the draws and the 2 px rule mean
  what they meant), but the pixels are produced once, at the end: the window the zoom-out and
  the crop select is cut from the cached image (gray outside it) and resized straight to the
  network input by the resize the detector applies when serving (`NetworkInput`), e.g.
  pedestrian_adas_0002's antialiased stretch. Before, the crop was made at full resolution and
  the detector resized it inside its forward: the same resize of the same window, one resample.
  The model's own resize is then an identity (its size already matches) and is skipped.
- The training cache keeps each image decoded once as uint8, downscaled (antialiased) so its
  longer side is at most twice the network input's longer side; a crop keeps at least half of
  each side, so even the smallest crop is resized down, never up, to the input. Windows are
  rounded to whole cache pixels and the boxes follow the rounded window exactly.
- The photometric distortion runs after the geometry, on the network-size batch on the
  training device, instead of first on the full image. Brightness, saturation, hue and the
  channel permutation act pixel by pixel, so the order does not matter (up to interpolation);
  contrast blends towards the mean gray of the image content inside the window (before: of the
  whole image), and the zoom-out's gray fill is restored after the distortion, so it stays the
  undistorted 0.5 it was.
- The random draws of a sample come from its own generator, seeded from (step seed, iteration,
  position in the batch), not from the global torch generator: the batches of a seed are the
  same whatever the number of loader worker processes (`core.train`).
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from core.data.records import ImageRecord

FILL = 0.5  # RandomZoomOut's mean-gray fill (images in [0, 1])
MIN_BOX_SIZE = 2.0  # SanitizeBoundingBoxes(min_size=2), in original image pixels
ZOOM_OUT_P, ZOOM_OUT_MAX = 0.3, 1.5
IOU_CROP_P, IOU_CROP_MIN_SCALE, IOU_CROP_TRIALS = 0.5, 0.5, 40
IOU_CROP_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # 1.0: leave the image as is
IOU_CROP_ASPECT = (0.5, 2.0)
FLIP_P = 0.5
PHOTOMETRIC_P = 0.5
BRIGHTNESS, CONTRAST, SATURATION, HUE = (0.875, 1.125), (0.5, 1.5), (0.5, 1.5), (-0.05, 0.05)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class NetworkInput:
    """How a detector turns an image into its input, so training resizes as serving does.

    `stretch`: to `height` x `width`, aspect ratio not kept; `longer_side`: the longer side to
    `size`, the other rounded in proportion (PedNet); `native`: no resize here, the detector
    resizes internally (a crop at the cached resolution, capped at `size` on its longer side if
    `size` is set). `antialias`: torch's antialiased bilinear (pedestrian_adas_0002) rather than
    plain bilinear (half-pixel centres, align_corners=False).
    """

    mode: Literal["stretch", "longer_side", "native"]
    height: int = 0
    width: int = 0
    size: int = 0
    antialias: bool = False

    @property
    def cache_side(self) -> int | None:
        """The longest side the training cache keeps (None: full resolution)."""
        if self.mode == "stretch":
            return 2 * max(self.height, self.width)
        if self.mode == "longer_side":
            return 2 * self.size
        return 2 * self.size if self.size else None

    def output_size(self, window_h: float, window_w: float, cache_h: int, cache_w: int) -> tuple[int, int]:
        """(height, width) of the network input made from a window of `window_h` x `window_w`
        original pixels, `cache_h` x `cache_w` cached pixels."""
        if self.mode == "stretch":
            return self.height, self.width
        if self.mode == "longer_side":
            scale = self.size / max(window_h, window_w)
            return max(1, round(window_h * scale)), max(1, round(window_w * scale))
        return cache_h, cache_w


def resize(image: Tensor, height: int, width: int, *, antialias: bool) -> Tensor:
    """Float [C, H, W] (or [N, C, H, W]) resized bilinearly (half-pixel centres), as the
    detectors resize: `antialias` for pedestrian_adas_0002. Same size: returned as is."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
    return out if image.dim() == 4 else out[0]


# -- the cache ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedImage:
    """A training image decoded once: uint8 [3, h, w], at most `cache_side` on its longer side,
    and the size of the original it was scaled from."""

    pixels: Tensor
    orig_height: int
    orig_width: int

    @property
    def scale_x(self) -> float:
        return self.pixels.shape[-1] / self.orig_width

    @property
    def scale_y(self) -> float:
        return self.pixels.shape[-2] / self.orig_height


def cache_image(full: Tensor, max_side: int | None) -> CachedImage:
    """`full` (uint8 [3, H, W], the decoded original) as the training cache keeps it: as is when
    its longer side is within `max_side`, else downscaled (antialiased) to it."""
    h, w = int(full.shape[-2]), int(full.shape[-1])
    if max_side is None or max(h, w) <= max_side:
        return CachedImage(full, h, w)
    scale = max_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = resize(full.float(), nh, nw, antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return CachedImage(small.contiguous(), h, w)


# -- per-sample randomness ----------------------------------------------------------------
def sample_rng(seed: int, iteration: int, position: int) -> random.Random:
    """The generator of one sample: a function of (seed, iteration, position in the batch) only,
    so a batch is the same in the main process and in any loader worker."""
    digest = hashlib.blake2b(f"flexbin-augment:{seed}:{iteration}:{position}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


# -- geometry -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """The window of the original image a sample shows (x0, y0, x1, y1 in original pixels;
    beyond the image on a zoom-out, filled gray), whether it is mirrored, and the boxes that
    survive (original pixels, clipped to the window)."""

    window: tuple[int, int, int, int]
    flip: bool
    boxes: list[tuple[float, float, float, float]]


def _iou_crop(rng: random.Random, width: int, height: int,
              boxes: list[tuple[float, float, float, float]]) -> tuple[int, int, int, int, list[bool]] | None:
    """`v2.RandomIoUCrop(min_scale=0.5).make_params` on a `width` x `height` canvas: (left, top,
    new_w, new_h, box centre inside) or None for "leave as is"."""
    lo_ar, hi_ar = IOU_CROP_ASPECT
    while True:
        min_iou = IOU_CROP_OPTIONS[rng.randrange(len(IOU_CROP_OPTIONS))]
        if min_iou >= 1.0:
            return None
        for _ in range(IOU_CROP_TRIALS):
            new_w = int(width * (IOU_CROP_MIN_SCALE + (1 - IOU_CROP_MIN_SCALE) * rng.random()))
            new_h = int(height * (IOU_CROP_MIN_SCALE + (1 - IOU_CROP_MIN_SCALE) * rng.random()))
            if new_h == 0 or not lo_ar <= new_w / new_h <= hi_ar:
                continue
            left = int((width - new_w) * rng.random())
            top = int((height - new_h) * rng.random())
            right, bottom = left + new_w, top + new_h
            if left == right or top == bottom:
                continue
            inside = [left < (b[0] + b[2]) / 2 < right and top < (b[1] + b[3]) / 2 < bottom for b in boxes]
            if not any(inside):
                continue
            crop_area = new_w * new_h
            best = 0.0
            for b, ok in zip(boxes, inside):
                if not ok:
                    continue
                iw = min(b[2], right) - max(b[0], left)
                ih = min(b[3], bottom) - max(b[1], top)
                inter = max(iw, 0.0) * max(ih, 0.0)
                union = (b[2] - b[0]) * (b[3] - b[1]) + crop_area - inter
                best = max(best, inter / union if union > 0 else 0.0)
            if best < min_iou:
                continue
            return left, top, new_w, new_h, inside


def sample_geometry(rng: random.Random, width: int, height: int,
                    boxes: Sequence[Sequence[float]]) -> Geometry:
    """Zoom-out, IoU crop and flip for a `width` x `height` image with x1y1x2y2 `boxes`,
    drawn as `train_transforms` draws them (module docstring)."""
    kept = [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in boxes]
    # Canvas coordinates: the image at (ox, oy) on a cw x ch canvas.
    ox = oy = 0
    cw, ch = width, height
    if rng.random() < ZOOM_OUT_P:
        r = 1.0 + (ZOOM_OUT_MAX - 1.0) * rng.random()
        cw, ch = int(width * r), int(height * r)
        ox, oy = int((cw - width) * rng.random()), int((ch - height) * rng.random())
    x0, y0, x1, y1 = 0, 0, cw, ch  # the window, canvas coordinates
    if rng.random() < IOU_CROP_P:
        shifted = [(b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy) for b in kept]
        crop = _iou_crop(rng, cw, ch, shifted)
        if crop is not None:
            left, top, new_w, new_h, inside = crop
            x0, y0, x1, y1 = left, top, left + new_w, top + new_h
            kept = [b for b, ok in zip(kept, inside) if ok]
    flip = rng.random() < FLIP_P
    window = (x0 - ox, y0 - oy, x1 - ox, y1 - oy)  # image coordinates
    clipped = []
    for bx0, by0, bx1, by1 in kept:
        b = (max(bx0, window[0]), max(by0, window[1]), min(bx1, window[2]), min(by1, window[3]))
        if b[2] - b[0] >= MIN_BOX_SIZE and b[3] - b[1] >= MIN_BOX_SIZE:
            clipped.append(b)
    return Geometry(window, flip, clipped)


# -- photometric parameters ---------------------------------------------------------------
# One row per sample: brightness, contrast before, saturation, hue, contrast after factors
# (1, 1, 1, 0, 1 = off), then the hue flag, then the channel permutation (3 values).
PHOTO_COLUMNS = 9


def sample_photometric(rng: random.Random) -> list[float]:
    """`v2.RandomPhotometricDistort()`'s draws for one sample, as a PHOTO_COLUMNS row."""
    def maybe(lo: float, hi: float) -> float | None:
        return rng.uniform(lo, hi) if rng.random() < PHOTOMETRIC_P else None

    brightness = maybe(*BRIGHTNESS)
    contrast = maybe(*CONTRAST)
    saturation = maybe(*SATURATION)
    hue = maybe(*HUE)
    contrast_before = rng.random() < 0.5
    perm = [0.0, 1.0, 2.0]
    if rng.random() < PHOTOMETRIC_P:
        order = [0, 1, 2]
        rng.shuffle(order)
        perm = [float(v) for v in order]
    c = 1.0 if contrast is None else contrast
    return [1.0 if brightness is None else brightness, c if contrast_before else 1.0,
            1.0 if saturation is None else saturation, 0.0 if hue is None else hue,
            1.0 if contrast_before else c, 0.0 if hue is None else 1.0, *perm]


# -- a sample and a batch -----------------------------------------------------------------
@dataclass
class TrainBatch:
    """A batch at the network's resolution, before the photometric distortion.

    images: float [N, 3, H, W] in [0, 1] (samples smaller than H x W sit top-left, `sizes` says
    their own (h, w)); boxes: float [sum M_i, 4] x1y1x2y2 in each sample's pixels, `counts` the
    M_i; content: float [N, 4] x0, y0, x1, y1, the part of each sample that shows the image (the
    rest is the zoom-out's fill); photometric: float [N, PHOTO_COLUMNS] (`sample_photometric`);
    hue_rows: int64 [K], the samples whose hue is shifted (a tensor that travels with the batch,
    so that selecting them never waits on the device).
    """

    images: Tensor
    sizes: list[tuple[int, int]]
    boxes: Tensor
    counts: list[int]
    content: Tensor
    photometric: Tensor
    hue_rows: Tensor

    def _map(self, fn: Callable[[Tensor], Tensor]) -> TrainBatch:
        return TrainBatch(fn(self.images), self.sizes, fn(self.boxes), self.counts, fn(self.content),
                          fn(self.photometric), fn(self.hue_rows))

    def pin_memory(self) -> TrainBatch:
        """Page-locked copies (the DataLoader's pin_memory calls this)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def model_inputs(self, *, photometric: bool = True) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """(images, targets) for a torchvision-API detector, on the batch's device, after the
        photometric distortion (batched, on that device) unless `photometric` is False."""
        images = distort(self.images, self.photometric, self.content, self.hue_rows) if photometric \
            else self.images
        device = images.device
        return ([images[i, :, :h, :w] for i, (h, w) in enumerate(self.sizes)],
                [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64, device=device)}
                 for b in torch.split(self.boxes, self.counts)])


def render_sample(image: CachedImage, geometry: Geometry, net: NetworkInput
                  ) -> tuple[Tensor, Tensor, tuple[float, float, float, float]]:
    """The sample's pixels (float [3, h, w] at the network input), its boxes (float [M, 4] in
    those pixels, inside the image, none under MIN_BOX_SIZE original pixels) and the part of
    it that shows the image (x0, y0, x1, y1), from one crop (gray beyond the image) and one resize."""
    sx, sy = image.scale_x, image.scale_y
    ch, cw = int(image.pixels.shape[-2]), int(image.pixels.shape[-1])
    wx0, wy0, wx1, wy1 = geometry.window
    # The window in whole cache pixels (exact when the cache is at full resolution).
    x0, y0 = round(wx0 * sx), round(wy0 * sy)
    x1, y1 = max(x0 + 1, round(wx1 * sx)), max(y0 + 1, round(wy1 * sy))
    ww, wh = x1 - x0, y1 - y0
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, cw), min(y1, ch)
    if (ix0, iy0, ix1, iy1) == (x0, y0, x1, y1):
        window = image.pixels[:, y0:y1, x0:x1].float().div_(255)
    else:
        window = torch.full((3, wh, ww), FILL)
        if ix1 > ix0 and iy1 > iy0:
            window[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = image.pixels[:, iy0:iy1, ix0:ix1].float().div_(255)
    oh, ow = net.output_size(wy1 - wy0, wx1 - wx0, wh, ww)
    pixels = resize(window, oh, ow, antialias=net.antialias)
    fx, fy = ow / ww, oh / wh  # output pixels per cache pixel
    rows = []
    min_w, min_h = MIN_BOX_SIZE * sx * fx, MIN_BOX_SIZE * sy * fy  # 2 original pixels, in output pixels
    for bx0, by0, bx1, by1 in geometry.boxes:
        b = [min(max((bx0 * sx - x0) * fx, 0.0), ow), min(max((by0 * sy - y0) * fy, 0.0), oh),
             min(max((bx1 * sx - x0) * fx, 0.0), ow), min(max((by1 * sy - y0) * fy, 0.0), oh)]
        # The rounded window may cut a sliver of a box at its edge: 2 px still means 2 px.
        if b[2] - b[0] >= min_w * (1 - 1e-6) and b[3] - b[1] >= min_h * (1 - 1e-6):
            rows.append(b)
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    content = [min(max((0 - x0) * fx, 0.0), ow), min(max((0 - y0) * fy, 0.0), oh),
               min(max((cw - x0) * fx, 0.0), ow), min(max((ch - y0) * fy, 0.0), oh)]
    if geometry.flip:
        pixels = pixels.flip(-1)
        boxes = torch.stack([ow - boxes[:, 2], boxes[:, 1], ow - boxes[:, 0], boxes[:, 3]], 1)
        content = [ow - content[2], content[1], ow - content[0], content[3]]
    return pixels, boxes, (content[0], content[1], content[2], content[3])


@dataclass(frozen=True)
class SampleKey:
    """Which record a sample shows and what seeds its augmentation."""

    seed: int
    iteration: int
    position: int
    index: int  # into the dataset's records


class AugmentedDetectionSet(torch.utils.data.Dataset[TrainBatch]):
    """The training images of `records`, decoded once (uint8, `net.cache_side` at most), served
    as whole `TrainBatch`es: a DataLoader's batch sampler hands `__getitems__` a list of
    `SampleKey`s (`TrainSampler`)."""

    def __init__(self, records: Sequence[ImageRecord], net: NetworkInput, images: Sequence[CachedImage]) -> None:
        if len(images) != len(records):
            raise ValueError("one cached image per record")
        self.net = net
        self.images = list(images)
        self.boxes = [r.boxes.tolist() for r in records]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: SampleKey) -> TrainBatch:
        return self.__getitems__([key])

    def __getitems__(self, keys: Sequence[SampleKey]) -> TrainBatch:
        pixels, boxes, contents, photo = [], [], [], []
        for key in keys:
            rng = sample_rng(key.seed, key.iteration, key.position)
            image = self.images[key.index]
            geometry = sample_geometry(rng, image.orig_width, image.orig_height, self.boxes[key.index])
            photo.append(sample_photometric(rng))
            p, b, c = render_sample(image, geometry, self.net)
            pixels.append(p)
            boxes.append(b)
            contents.append(c)
        sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in pixels]
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        if all(s == (height, width) for s in sizes):
            images = torch.stack(pixels)
        else:
            images = torch.full((len(pixels), 3, height, width), FILL)
            for i, p in enumerate(pixels):
                images[i, :, :p.shape[-2], :p.shape[-1]] = p
        return TrainBatch(images, sizes, torch.cat(boxes), [len(b) for b in boxes],
                          torch.tensor(contents, dtype=torch.float32), torch.tensor(photo, dtype=torch.float32),
                          torch.tensor([i for i, row in enumerate(photo) if row[5]], dtype=torch.int64))


class TrainSampler:
    """Batches of `SampleKey`s for `iterations` iterations: each epoch a permutation of the
    records drawn from a generator seeded with `seed`, cut into batches of `batch_size` (an
    incomplete last batch is dropped; fewer records than a batch make one smaller batch), as the
    old training loop sampled. Reconfigured per call (`configure`) so a persistent DataLoader
    serves every fine-tuning step."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seed, self.batch_size, self.iterations = 0, 1, 0

    def configure(self, *, seed: int, batch_size: int, iterations: int) -> None:
        self.seed, self.batch_size, self.iterations = seed, batch_size, iterations

    def __len__(self) -> int:
        return self.iterations

    def __iter__(self) -> Iterator[list[SampleKey]]:
        seed, batch_size, iterations = self.seed, self.batch_size, self.iterations
        generator = torch.Generator().manual_seed(seed)
        i = 0
        while i < iterations:
            order = torch.randperm(self.size, generator=generator).tolist()
            for start in range(0, max(1, self.size - batch_size + 1), batch_size):
                if i >= iterations:
                    return
                yield [SampleKey(seed, i, pos, index) for pos, index in enumerate(order[start:start + batch_size])]
                i += 1


def collate_batch(batch: Any) -> Any:
    """The DataLoader's collate_fn: `__getitems__` already made the batch (a TrainBatch)."""
    return batch


# -- photometric distortion, batched --------------------------------------------------------
def _gray(images: Tensor) -> Tensor:
    r, g, b = images.unbind(1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """`factor * images + (1 - factor) * other`, clipped to [0, 1] (torchvision's `_blend`)."""
    return torch.lerp(other.expand_as(images), images, factor).clamp_(0.0, 1.0)


def adjust_hue(images: Tensor, factors: Tensor) -> Tensor:
    """Each image's hue shifted by its factor (a fraction of the colour wheel), as
    `torchvision.transforms.v2.functional.adjust_hue` ([N, 3, H, W] in [0, 1], factors [N]).

    The same hue (Pillow's RGB -> HSV) and the same HSV -> RGB, written with fewer operations:
    value and minimum stay, and each channel is `max - chroma * clamp(min(k, 4 - k), 0, 1)` with
    k = (n + 6 h) mod 6, n = 5, 3, 1 for red, green, blue (equal to torchvision's up to float
    rounding)."""
    r, g, b = images.unbind(1)
    maxc, minc = images.amax(1), images.amin(1)
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue6 = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))  # in [-1, 5)
    hue6 = (hue6 + 6.0 * factors.view(-1, 1, 1)).remainder_(6.0)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (hue6 + n).remainder_(6.0)
        out.append(maxc - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, 1)


def distort(images: Tensor, params: Tensor, content: Tensor, hue_rows: Tensor | None = None) -> Tensor:
    """The photometric distortion of a batch (float [N, 3, H, W] in [0, 1]), every sample with
    its own `params` row (`sample_photometric`), on the images' device; pixels outside each
    sample's `content` box are set back to the gray fill. `hue_rows`: the samples whose hue
    changes (int64 on the images' device; None: those whose hue flag is set, found on the host).
    Returns a new tensor; boxes are untouched by construction."""
    n, _, height, width = images.shape
    ys = torch.arange(height, device=images.device, dtype=images.dtype).view(1, 1, -1, 1) + 0.5
    xs = torch.arange(width, device=images.device, dtype=images.dtype).view(1, 1, 1, -1) + 0.5
    box = content.to(images.dtype).view(n, 4, 1, 1)
    inside = (xs >= box[:, 0:1]) & (xs <= box[:, 2:3]) & (ys >= box[:, 1:2]) & (ys <= box[:, 3:4])  # [N,1,H,W]
    weight = inside.to(images.dtype)
    area = weight.sum((2, 3), keepdim=True).clamp_(min=1.0)

    def factor(column: int) -> Tensor:
        return params[:, column].to(images.dtype).view(n, 1, 1, 1)

    def contrast(x: Tensor, column: int) -> Tensor:
        mean = (_gray(x) * weight).sum((2, 3), keepdim=True) / area  # of the image content only
        return _blend(x, mean, factor(column))

    out = (images * factor(0)).clamp_(0.0, 1.0)
    out = contrast(out, 1)
    out = _blend(out, _gray(out), factor(2))
    if hue_rows is None:
        hue_rows = torch.nonzero(params[:, 5].cpu()).flatten().to(images.device)
    if hue_rows.numel():  # a zero shift must not go through HSV: the round trip is not exact
        out[hue_rows] = adjust_hue(out[hue_rows], params[hue_rows, 3].to(images.dtype))
    out = contrast(out, 4)
    perm = params[:, 6:9].to(torch.int64).view(n, 3, 1, 1).expand(n, 3, height, width)
    return out.gather(1, perm).masked_fill_(~inside, FILL)
