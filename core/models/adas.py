"""Intel's pedestrian-detection-adas-0002 (Open Model Zoo, Apache-2.0) as a PyTorch module.

The network mirrors the OpenVINO IR layer for layer: an SSD whose feature extractor is a
channel-reduced MobileNet v1 (a dense 3x3 stem, then depthwise 3x3 + pointwise 1x1 pairs,
every convolution followed by a ReLU; BatchNorm is folded into the convolutions' weights
and biases), with ten SSD heads (3x3 conv box regression + 3x3 conv confidence) on six
feature maps at strides 16, 32, 64, 128 and the last two.

Everything the IR does around the convolutions is reproduced here:
- preprocessing: resize to the network input (plain, aspect ratio not kept), RGB -> BGR,
  0-255, `(x - IR_MEAN_BGR) * IR_SCALE`;
- priors: the IR's PriorBox layers (min / max sizes, aspect ratios with flip, steps,
  offset 0.5), generated for the feature map and input sizes of the forward pass, as
  OpenVINO would for the IR reshaped to that input size;
- DetectionOutput: CENTER_SIZE decoding with the variances (0.1, 0.1, 0.2, 0.2), softmax
  confidences, per class the `PRE_NMS_TOP_K` best above the confidence threshold, NMS at
  IoU 0.45, then the best `detections_per_img` (the IR's keep_top_k, 200).

The weights are not part of this module: `core.pretrained.load_pretrained` loads
the converted ones (`tools/convert_adas_ir.py` writes them from the IR).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms

from core.models.outputs import DenseDetector, DenseOutputs

# Input of the IR: 1x3x384x672, BGR, 0-255; the IR subtracts this mean and multiplies by
# this scale (both stored as FP16 constants in the IR: these are their exact values).
IR_INPUT_HEIGHT, IR_INPUT_WIDTH = 384, 672
IR_MEAN_BGR = (104.0, 117.0, 123.0)
IR_SCALE = 0.016998291015625  # float16(0.017)
IR_VARIANCES = (0.1, 0.1, 0.2, 0.2)
IR_NMS_THRESHOLD = 0.45
IR_CONFIDENCE_THRESHOLD = 0.01
IR_KEEP_TOP_K = 200
PRE_NMS_TOP_K = 400  # DetectionOutput's top_k: candidates per class before NMS


@dataclass(frozen=True)
class _Block:
    """One feature-extractor block: a dense conv (`depthwise=False`: the 3x3 stem or a 1x1
    conv) or a depthwise 3x3 + pointwise 1x1 pair; `stride` is the 3x3 conv's."""

    name: str
    out_channels: int
    stride: int = 1
    depthwise: bool = True
    kernel: int = 3


# The IR's feature extractor in execution order (IR layer names: `conv2_1/dw`, `conv2_1/sep`,
# ...; the pointwise convs of conv6_2 ... conv9_2 are `conv6_2_new` ... in the IR).
BACKBONE: tuple[_Block, ...] = (
    _Block("conv1", 32, stride=2, depthwise=False),
    _Block("conv2_1", 56), _Block("conv2_2", 112, stride=2),
    _Block("conv3_1", 96), _Block("conv3_2", 232, stride=2),
    _Block("conv4_1", 208), _Block("conv4_2", 352, stride=2),
    _Block("conv5_1", 320), _Block("conv5_2", 296), _Block("conv5_3", 248),
    _Block("conv5_4", 272), _Block("conv5_5", 176),                    # stride 16: heads
    _Block("conv5_6", 256, stride=2), _Block("conv6", 96),             # stride 32: heads
    _Block("conv6_1", 96, depthwise=False, kernel=1), _Block("conv6_2", 120, stride=2),
    _Block("conv7_1", 120, depthwise=False, kernel=1), _Block("conv7_2", 144, stride=2),
    _Block("conv8_1", 120, depthwise=False, kernel=1), _Block("conv8_2", 216, stride=2),
    _Block("conv9_1", 64, depthwise=False, kernel=1), _Block("conv9_2", 128, stride=2),
)


@dataclass(frozen=True)
class PriorSpec:
    """One SSD head and its IR PriorBox attributes (sizes and step in input pixels;
    step 0 = the input size divided by the feature map size, per axis)."""

    head: str           # IR prefix: `<head>_mbox_loc`, `<head>_mbox_conf`, `<head>_mbox_priorbox`
    feature: str        # the BACKBONE block whose output it reads
    min_size: float
    max_size: float
    aspect_ratios: tuple[float, ...]
    step: float

    @property
    def num_priors(self) -> int:
        return 2 + 2 * len(self.aspect_ratios)  # min, sqrt(min*max), then each ratio and its flip


# The IR's ten heads, in the order of its mbox_loc / mbox_conf / mbox_priorbox concats. The
# `_bigpriors` heads of conv6_2 and conv7_2 are `<feature>_mbox_loc_bigpriors` in the IR.
# Sizes are float32 in the IR (38.400001525878906 ...); float32 tensors of these round alike.
PRIORS: tuple[PriorSpec, ...] = (
    PriorSpec("conv4_3_0_norm", "conv5_5", 16.0, 38.4, (2.0,), 16.0),
    PriorSpec("conv4_3_norm", "conv5_5", 38.4, 76.8, (2.0,), 16.0),
    PriorSpec("fc7_0", "conv6", 76.8, 124.8, (2.0, 3.0), 32.0),
    PriorSpec("fc7", "conv6", 124.8, 172.8, (2.0, 3.0), 32.0),
    PriorSpec("conv6_2", "conv6_2", 172.8, 201.6, (2.0, 3.0), 64.0),
    PriorSpec("conv6_2_bigpriors", "conv6_2", 201.6, 230.4, (2.0, 3.0), 64.0),
    PriorSpec("conv7_2", "conv7_2", 230.4, 259.2, (2.0, 3.0), 128.0),
    PriorSpec("conv7_2_bigpriors", "conv7_2", 259.2, 288.0, (2.0, 3.0), 128.0),
    PriorSpec("conv8_2", "conv8_2", 288.0, 345.6, (2.0,), 0.0),
    PriorSpec("conv9_2", "conv9_2", 345.6, 403.2, (2.0,), 0.0),
)


class _Conv(nn.Module):
    """A dense convolution (BatchNorm folded into weight and bias) and its ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x), inplace=True)


class _Separable(nn.Module):
    """Depthwise 3x3 conv + ReLU, then pointwise 1x1 conv + ReLU (MobileNet v1)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in)
        self.sep = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.sep(F.relu(self.dw(x), inplace=True)), inplace=True)


class _Head(nn.Module):
    """One SSD head: 3x3 convs to 4 box offsets and `num_classes` logits per prior."""

    def __init__(self, c_in: int, num_priors: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.loc = nn.Conv2d(c_in, num_priors * 4, 3, padding=1)
        self.conf = nn.Conv2d(c_in, num_priors * num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """([N, H*W*A, 4], [N, H*W*A, num_classes]) in the IR's order: location-major, then prior."""
        n = x.shape[0]
        loc = self.loc(x).permute(0, 2, 3, 1).reshape(n, -1, 4)
        conf = self.conf(x).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        return loc, conf


def prior_boxes(spec: PriorSpec, feature_hw: tuple[int, int], image_hw: tuple[int, int]) -> Tensor:
    """FloatTensor[H*W*A, 4] x1, y1, x2, y2 normalised by the input size (0..1; not clipped),
    exactly as OpenVINO's PriorBox (opset 1/8, `scale_all_sizes`, `flip`, `clip` off) computes
    them: for each cell (row-major), the square `min_size` box, the square
    `sqrt(min_size * max_size)` box, then `min_size * sqrt(r)` x `min_size / sqrt(r)` for each
    aspect ratio r and its flip 1/r."""
    fh, fw = feature_hw
    ih, iw = image_hw
    if spec.step == 0:
        step_x, step_y = iw / fw, ih / fh
        cx = (torch.arange(fw, dtype=torch.float32) + 0.5) * step_x
        cy = (torch.arange(fh, dtype=torch.float32) + 0.5) * step_y
    else:
        cx = (torch.arange(fw, dtype=torch.float32) + 0.5) * spec.step
        cy = (torch.arange(fh, dtype=torch.float32) + 0.5) * spec.step
    min_size = torch.tensor(spec.min_size, dtype=torch.float32)
    max_size = torch.tensor(spec.max_size, dtype=torch.float32)
    half_sizes = [(min_size * 0.5, min_size * 0.5)]
    big = torch.sqrt(min_size * max_size) * 0.5
    half_sizes.append((big, big))
    for ratio in spec.aspect_ratios:
        for r in (ratio, 1.0 / ratio):
            root = math.sqrt(torch.tensor(r, dtype=torch.float32).item())
            half_sizes.append((min_size * 0.5 * root, min_size * 0.5 / root))
    half_w = torch.stack([w for w, _ in half_sizes])  # [A]
    half_h = torch.stack([h for _, h in half_sizes])
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")
    cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)  # [H*W, 1]
    boxes = torch.stack([(cx - half_w) / iw, (cy - half_h) / ih,
                         (cx + half_w) / iw, (cy + half_h) / ih], dim=-1)  # [H*W, A, 4]
    return boxes.reshape(-1, 4)


class PedestrianAdas(DenseDetector):
    """pedestrian-detection-adas-0002: SSD + channel-reduced MobileNet v1, following
    torchvision's detection API like every registered FlexBin detector.

    Input: list of FloatTensor[3, H, W] RGB in [0, 1], any sizes; each image is resized
    (plainly, aspect ratio not kept) to `input_height` x `input_width` and turned into the
    IR's input (BGR, 0-255, then `(x - mean) * scale` inside the module).
    Train mode: `model(images, targets)` with targets `[{"boxes": FloatTensor[M, 4] x1, y1,
    x2, y2 in the image's pixels, "labels": Int64Tensor[M]}]` -> `{"classification",
    "bbox_regression"}` (SSD multibox loss, see `multibox_loss`).
    Eval mode: `model(images)` -> `[{"boxes": FloatTensor[N, 4] x1, y1, x2, y2 in the input
    image's pixels (clipped to it), "scores": FloatTensor[N], "labels": Int64Tensor[N]}]`,
    best first.
    """

    mean: Tensor  # the IR's BGR mean, a [1, 3, 1, 1] buffer

    def __init__(
        self,
        *,
        num_classes: int = 2,
        input_height: int = IR_INPUT_HEIGHT,
        input_width: int = IR_INPUT_WIDTH,
        score_thresh: float = IR_CONFIDENCE_THRESHOLD,
        nms_thresh: float = IR_NMS_THRESHOLD,
        detections_per_img: int = IR_KEEP_TOP_K,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + pedestrian), got {num_classes}")
        if input_height < 32 or input_width < 32:
            raise ValueError(f"input_height and input_width must be >= 32, got {input_height}x{input_width}")
        self.num_classes = num_classes
        self.input_height, self.input_width = input_height, input_width
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        features: dict[str, nn.Module] = {}
        channels: dict[str, int] = {}
        c_in = 3
        for block in BACKBONE:
            features[block.name] = (_Separable(c_in, block.out_channels, block.stride) if block.depthwise
                                    else _Conv(c_in, block.out_channels, block.kernel, block.stride))
            c_in = channels[block.name] = block.out_channels
        self.features = nn.ModuleDict(features)
        self.heads = nn.ModuleDict({
            spec.head: _Head(channels[spec.feature], spec.num_priors, num_classes) for spec in PRIORS})
        self._heads_after = {block.name: [s.head for s in PRIORS if s.feature == block.name] for block in BACKBONE}
        self.register_buffer("mean", torch.tensor(IR_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self.box_coder = det_utils.BoxCoder(weights=tuple(1.0 / v for v in IR_VARIANCES))
        # SSD matching (Liu et al. 2016): IoU >= 0.5, and every ground truth keeps its best prior.
        self.matcher = det_utils.SSDMatcher(0.5)
        self._priors: dict[tuple[tuple[int, int], ...], Tensor] = {}  # on the device last used

    # -- input -------------------------------------------------------------------
    def preprocess(self, images: Sequence[Tensor]) -> Tensor:
        """FloatTensor[N, 3, input_height, input_width]: the IR's input (BGR, 0-255) for RGB
        images in [0, 1]. Antialiased bilinear resize (plain bilinear when upscaling); images
        already at the input size (training's crops, `core.data.augment`) are not resampled: that
        resize would be an exact identity."""
        size = (self.input_height, self.input_width)
        if all(tuple(image.shape[-2:]) == size for image in images):
            return (torch.stack(list(images)) * 255.0).flip(1)  # RGB -> BGR
        batch = [F.interpolate(image[None] * 255.0, size=size, mode="bilinear", align_corners=False, antialias=True)
                 for image in images]
        return torch.cat(batch).flip(1)  # RGB -> BGR

    def raw_outputs(self, bgr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Network outputs for the IR's input: (box offsets FloatTensor[N, P, 4] as encoded
        with the variances, confidence logits FloatTensor[N, P, num_classes], priors
        FloatTensor[P, 4] x1, y1, x2, y2 normalised to 0..1), P priors in the IR's order."""
        loc, conf, sizes = self.head_outputs((bgr - self.mean) * IR_SCALE)
        return loc, conf, self.priors_for(sizes, (bgr.shape[-2], bgr.shape[-1]), bgr.device)

    def head_outputs(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, tuple[int, int]]]:
        """(box offsets [N, P, 4], confidence logits [N, P, num_classes], each head's feature
        map size) for the normalised input `x`, P priors in the IR's order."""
        locs: dict[str, Tensor] = {}
        confs: dict[str, Tensor] = {}
        sizes: dict[str, tuple[int, int]] = {}
        # Heads run as soon as their feature map exists, so execution order (the layer depth
        # `core.priority.discover_layers` sees) follows the graph: a stride-16 head is shallower
        # than the stride-32 features.
        for name, block in self.features.items():
            x = block(x)
            for head in self._heads_after[name]:
                locs[head], confs[head] = self.heads[head](x)
                sizes[head] = (int(x.shape[-2]), int(x.shape[-1]))
        return (torch.cat([locs[s.head] for s in PRIORS], 1), torch.cat([confs[s.head] for s in PRIORS], 1), sizes)

    def priors_for(self, sizes: dict[str, tuple[int, int]], image_hw: tuple[int, int],
                   device: torch.device) -> Tensor:
        """Every head's prior boxes, in the order of the network's outputs, for its feature map
        `sizes` and the input `image_hw` (cached, kept on `device`); the export bakes them in."""
        key = (image_hw, *(sizes[s.head] for s in PRIORS))
        if key not in self._priors:
            self._priors[key] = torch.cat([prior_boxes(s, sizes[s.head], image_hw) for s in PRIORS])
        if self._priors[key].device != device:  # kept on the device in use: no copy per forward
            self._priors[key] = self._priors[key].to(device)
        return self._priors[key]

    def decode(self, outputs: DenseOutputs, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self._detections(outputs.boxes, outputs.logits, outputs.raw, images)

    def dense_outputs(self, images: Sequence[Tensor]) -> DenseOutputs:
        """Box offsets and class logits per prior (softmax scores; `raw` holds the priors)."""
        loc, conf, priors = self.raw_outputs(self.preprocess(images))
        return DenseOutputs(loc, conf, "softmax", raw=priors)

    def dense_losses(self, outputs: DenseOutputs, images: Sequence[Tensor],
                     targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The SSD multibox losses of `outputs` (this model's, for `images`) against `targets`."""
        loc, conf = outputs.boxes.float(), outputs.logits.float()  # float32, also under bf16 autocast
        normalised = [_normalise(t["boxes"].to(loc), image) for t, image in zip(targets, images)]
        labels = [t["labels"].to(loc.device) for t in targets]
        return multibox_loss(loc, conf, outputs.raw, normalised, labels, self.box_coder, self.matcher)

    # -- inference ---------------------------------------------------------------
    def detect_resized(self, rgb: Tensor) -> list[dict[str, Tensor]]:
        """Detections for RGB images in [0, 1] already resized to [N, 3, input_height,
        input_width], in that input's pixels: the network without its resize (what the OpenVINO
        export traces; serving resizes outside the graph, as for Intel's IR)."""
        loc, conf, priors = self.raw_outputs((rgb * 255.0).flip(1))
        return self._detections(loc, conf, priors, list(rgb))

    def _detections(self, loc: Tensor, conf: Tensor, priors: Tensor,
                    images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        scores_all = F.softmax(conf, dim=-1)
        results = []
        for i, image in enumerate(images):
            boxes = self.box_coder.decode_single(loc[i], priors)  # normalised, unclipped
            cand_boxes, cand_scores, cand_labels = [], [], []
            for label in range(1, self.num_classes):  # 0 is the background
                scores = scores_all[i, :, label]
                keep = torch.nonzero(scores > self.score_thresh).squeeze(1)
                top = scores[keep].topk(min(PRE_NMS_TOP_K, keep.numel())).indices
                keep = keep[top]
                cand_boxes.append(boxes[keep])
                cand_scores.append(scores[keep])
                cand_labels.append(torch.full_like(keep, label))
            b, s, lab = torch.cat(cand_boxes), torch.cat(cand_scores), torch.cat(cand_labels)
            keep = batched_nms(b, s, lab, self.nms_thresh)[: self.detections_per_img]
            # NMS on the network's normalised boxes (as the IR); pixels and clipping after.
            h, w = image.shape[-2:]
            out = b[keep] * _whwh(image)
            out[:, 0::2] = out[:, 0::2].clamp(0, w)
            out[:, 1::2] = out[:, 1::2].clamp(0, h)
            results.append({"boxes": out, "scores": s[keep], "labels": lab[keep]})
        return results


def _normalise(boxes: Tensor, image: Tensor) -> Tensor:
    """Boxes in the image's pixels divided by its width and height (no host-device round trip)."""
    h, w = image.shape[-2:]
    return boxes * torch.tensor([1.0 / w, 1.0 / h, 1.0 / w, 1.0 / h]).to(boxes.device, non_blocking=True)


def _whwh(image: Tensor) -> Tensor:
    h, w = image.shape[-2:]
    return torch.tensor([w, h, w, h], dtype=torch.float32, device=image.device)


NEGATIVES_PER_POSITIVE = 3


def multibox_loss(loc: Tensor, conf: Tensor, priors: Tensor, boxes: Sequence[Tensor],
                  labels: Sequence[Tensor], box_coder: det_utils.BoxCoder,
                  matcher: det_utils.Matcher) -> dict[str, Tensor]:
    """The SSD multibox loss (Liu et al. 2016; torchvision's `SSD.compute_loss`).

    loc FloatTensor[N, P, 4] (offsets encoded with the variances), conf FloatTensor[N, P, C]
    logits, priors FloatTensor[P, 4] and boxes[i] FloatTensor[M_i, 4] all x1, y1, x2, y2
    normalised by the network input (IoU and the encoding are invariant to the per-axis
    scale); labels[i] Int64Tensor[M_i] in 1..C-1. Priors match ground truth at IoU >= 0.5
    (plus each ground truth's best prior); smooth L1 on the encoded boxes of the matched
    priors; cross-entropy on the matched priors and on the hardest background priors, three
    per positive. Both sums are divided by the number of matched priors.

    The whole batch is matched at once (ground truth padded to the most boxes of an image),
    with masks instead of index lists, so nothing waits on the device. `matcher` must be an
    `SSDMatcher` (the only kind this module builds); its rule is applied here, batched.
    """
    n, num_priors, num_classes = conf.shape
    device = conf.device
    most = max((len(b) for b in boxes), default=0)
    if most == 0:  # no ground truth: no positives, so no negatives are mined either
        zero = loc.sum() * 0.0 + conf.sum() * 0.0
        return {"bbox_regression": zero, "classification": zero}
    gt = loc.new_zeros((n, most, 4))
    gt_labels = torch.zeros((n, most), dtype=torch.int64, device=device)
    valid = torch.zeros((n, most), dtype=torch.bool, device=device)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        if len(b):
            gt[i, :len(b)] = b.to(gt)
            gt_labels[i, :len(b)] = lab.to(device)
            valid[i, :len(b)] = True
    iou = _batched_iou(gt, priors.to(gt)).masked_fill_(~valid[:, :, None], -1.0)  # [N, M, P]
    # torchvision's Matcher(0.5, 0.5): each prior takes its best ground truth if IoU >= 0.5 ...
    best_iou, matches = iou.max(dim=1)  # [N, P]
    matches = matches.masked_fill(best_iou < matcher.low_threshold, -1)
    # ... and SSDMatcher: every ground truth keeps its best prior (the later one where two share it).
    best_prior = iou.argmax(dim=2)  # [N, M]
    index = torch.where(valid, best_prior, num_priors)  # padding writes to a spare column
    widened = torch.cat([matches, matches.new_full((n, 1), -1)], 1)
    widened.scatter_(1, index, torch.arange(most, device=device).expand(n, most))
    matches = widened[:, :num_priors]
    positive = matches >= 0  # [N, P]
    gt_index = matches.clamp(min=0)
    matched = gt.gather(1, gt_index[:, :, None].expand(n, num_priors, 4))
    matched = torch.where(positive[:, :, None], matched, priors[None].to(gt))  # finite targets everywhere
    target = box_coder.encode_single(matched.reshape(-1, 4), priors.to(gt).repeat(n, 1)).view(n, num_priors, 4)
    box_loss = torch.where(positive, F.smooth_l1_loss(loc, target, reduction="none").sum(-1), 0.0).sum()
    cls_targets = torch.where(positive, gt_labels.gather(1, gt_index), 0)
    num_positive = positive.sum(1)  # [N]
    cls_loss = F.cross_entropy(conf.reshape(-1, num_classes), cls_targets.reshape(-1),
                               reduction="none").view(n, num_priors)
    foreground = cls_targets > 0
    # Hard negative mining: the background priors with the highest loss, 3 per positive.
    negative = cls_loss.detach().masked_fill(foreground, -float("inf"))
    rank = negative.argsort(dim=1, descending=True).argsort(dim=1)
    background = rank < NEGATIVES_PER_POSITIVE * num_positive[:, None]
    normaliser = num_positive.sum().clamp(min=1).to(loc.dtype)
    return {
        "bbox_regression": box_loss / normaliser,
        "classification": (torch.where(foreground, cls_loss, 0.0).sum()
                           + torch.where(background, cls_loss, 0.0).sum()) / normaliser,
    }


def _batched_iou(boxes: Tensor, priors: Tensor) -> Tensor:
    """IoU of boxes [N, M, 4] with priors [P, 4] (x1, y1, x2, y2): [N, M, P], as `box_iou`."""
    area_b = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # [N, M]
    area_p = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])  # [P]
    lt = torch.max(boxes[:, :, None, :2], priors[None, None, :, :2])
    rb = torch.min(boxes[:, :, None, 2:], priors[None, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_b[:, :, None] + area_p[None, None, :] - inter)
