"""The layer-priority binarization pipeline (Zhuang et al. 2017, arXiv 1709.04344).

One *step* binarizes the next layer in the chosen order (or the next `layers_per_step`
layers) — its weights, and with `activation_bits` 1 also its inputs where the layer can run as
a 1-bit convolution (only the first `binary_input_layers` such layers of the order, when set) —
fine-tunes the whole network for `finetune_iters` iterations, evaluates MR^-2 / AP@0.5 on the
validation split, measures the compression ratio and the exported
OpenVINO model's CPU latency, and hands a packed checkpoint (and its OpenVINO IR zip) to
`on_step`. Step 0 is the float model. With `deploy_format` openvino-int8 each step's NNCF int8
file is also made, evaluated and timed, and the target is judged on it (`select_step`).
The all-at-once baseline (XNOR-Net / BWN style) binarizes the same set of layers in one
step and fine-tunes with the same total iteration budget.

`consolidation_iters` (default 0: off) makes the two methods' optimizer treatment equal at
every step: the reported checkpoint of a step is a copy of the network fine-tuned for that
many more iterations with one fresh AdamW and one cosine schedule, while the run continues
from the unconsolidated network. A layer-priority step k and an all-at-once run over the same
k layers then both end with the same final anneal and the same total iterations
(`training_iterations`). The claim study (`bench/study/`, `bench/claim.py`) uses it.

`staged_schedule` (binary-input jobs) is NNCF's staged schedule inside each step: the step's
binary-input layers take binary inputs with float weights for the first half of its iterations,
and their weights are binarized for the second half. Its weights-only layers are binarized at
the start, and a step without binary-input layers fine-tunes once, as without the schedule.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field
from torch import nn

from core.binary import (
    InputBinarizer,
    WeightQuantizer,
    activation_quantizers,
    binarize_input,
    binarize_module,
    new_input_binarizer,
    supports_binary_input,
    weight_quantizer,
)
from core.checkpoint import (
    ModelCard,
    binarized_modules,
    compression_ratio,
    float_checkpoint_nbytes,
    load_state,
    pack_checkpoint,
    save_state,
    unpack_checkpoint,
)
from core.data import ImageRecord
from core.detection_metrics import evaluate_detections
from core.distillation import Distillation, frozen_teacher
from core.job_spec import (
    INT8,
    DeployFormat,
    Int8AfterOneBit,
    Int8Metrics,
    Int8Variant,
    PipelineConfig,
    StepMetrics,
    Target,
)
from core.priority import (
    LayerInfo,
    discover_layers,
    measure_sensitivity,
    order_layers,
    saved_bytes,
)
from core.train import (
    ImageCache,
    IterationReport,
    TrainOptions,
    detection_loss,
    evaluate_model,
    fixed_batches,
    train_detector,
)


class Progress(BaseModel):
    """A progress report: the step running and how far the whole run is."""

    step: int
    total_steps: int
    iteration: int
    total_iterations: int
    percent: float
    eta_seconds: float | None
    message: str = ""


class StepOutcome(StepMetrics):
    """One completed step: its metrics, plus `checkpoint` (packed, for serving) and `state`
    (latent float weights, for resuming) as bytes, which stay out of its JSON."""

    checkpoint: bytes = Field(repr=False, exclude=True)
    state: bytes = Field(repr=False, exclude=True)
    binary_input_layers: list[str] = Field(default_factory=list, description="layers with binary inputs too")
    layer_precision: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="layer -> {precision: what the checkpoint holds, runs_as: what "
        "OpenVINO's compiled model runs, ms: its measured time} (core.export.openvino.layer_report)")
    openvino: bytes | None = Field(default=None, repr=False, exclude=True,
                                   description="the OpenVINO IR zip of the checkpoint (None if not exported)")
    openvino_int8: bytes | None = Field(default=None, repr=False, exclude=True,
                                        description="its int8 IR zip (`deploy_format` openvino-int8; None otherwise)")


class PipelineResult(BaseModel):
    steps: list[StepOutcome]
    selected_index: int
    target_met: bool


OnStep = Callable[[StepOutcome], None]
OnProgress = Callable[[Progress], None]
ShouldStop = Callable[[], bool]


class Cancelled(Exception):
    """Raised inside `run` when `should_stop()` answered True."""


if TYPE_CHECKING:  # OpenVINO and NNCF load only when a step is exported
    from core.export.int8 import AccuracyControl

log = logging.getLogger(__name__)


# -- the run -------------------------------------------------------------------------
SENSITIVITY_BATCHES = 4
PROGRESS_INTERVAL_S = 1.0
STAGED_SEED_OFFSET = 700
"""A staged step's second half (weights binarized too) samples with seed `seed·1000 + 700 + step`
(its first half: `seed·1000 + step`, as every step; consolidation: `seed·1000 + 500 + layers`)."""
STAGES = ("fine-tuning with binary inputs", "fine-tuning with binary inputs and weights")
"""A staged step's two halves, as progress messages name them."""


@dataclass
class _Plan:
    """Layers binarized at each step 1..N (step 0 is the float model)."""

    steps: list[list[str]]
    iterations: list[int]
    expected_steps: int  # steps a compression target needs; all of them for a miss-rate budget


def binary_input_layers(plan: _Plan, modules: dict[str, nn.Module], config: PipelineConfig) -> set[str]:
    """The planned layers that take binary inputs when binarized: with `activation_bits` 1, the
    first `binary_input_layers` (all when null) of the plan's order that `supports_binary_input`;
    the others get 1-bit weights only. Derived from the plan alone, so a resumed job agrees."""
    if config.activation_bits != 1:
        return set()
    able = [name for step in plan.steps for name in step if supports_binary_input(modules[name])]
    return set(able if config.binary_input_layers is None else able[:config.binary_input_layers])


def plan_steps(model: nn.Module, card: ModelCard, config: PipelineConfig,
               sensitivity: dict[str, float] | None = None, savings: dict[str, float] | None = None,
               done: Sequence[Sequence[str]] = ()) -> _Plan:
    """Which layers each step binarizes, and how many fine-tuning iterations it gets (`finetune_iters`;
    `weights_only_iters` for a step none of whose layers takes binary inputs, when set; plus
    `iters_per_mac_percent` per percent of the network's multiply-accumulates the step's layers hold).

    `done`: the layers of steps 1..k already committed (a resumed run); they keep their place and
    only the rest is ordered again. That matters for the measured orders: a resumed `latency`
    job times its layers again, and the new table must not reorder what is already binarized."""
    discovered = discover_layers(model, card.input_size)
    layers = order_layers(_eligible(discovered, config), config.order, sensitivity, savings)
    prefix = [name for step in done for name in step]
    by_name = {layer.name: layer for layer in layers}
    layers = [by_name[name] for name in prefix if name in by_name] + [l for l in layers if l.name not in prefix]
    if not layers:
        raise ValueError("the model has no binarizable (Conv2d / Linear) layer with at least "
                         f"{config.min_layer_params} weights"
                         + ("" if config.binarize_depthwise else " (depthwise convs excluded)"))
    float_bytes = float_checkpoint_nbytes(model)
    ratios, saved = [], 0
    for layer in layers:
        saved += saved_bytes(layer, layer_quantizer(config))
        ratios.append(float_bytes / (float_bytes - saved))
    needed = len(layers)
    if config.target.min_compression_ratio is not None:
        needed = next((i + 1 for i, r in enumerate(ratios)
                       if r >= config.target.min_compression_ratio), len(layers))
    group = config.layers_per_step
    if config.method == "all_at_once":
        count = min(config.num_layers or needed, len(layers))
        # The budget of the layer-priority steps that binarize the same layers.
        return _Plan([[layer.name for layer in layers[:count]]],
                     [math.ceil(count / group) * config.finetune_iters], 1)
    steps = [[layer.name for layer in layers[i:i + group]] for i in range(0, len(layers), group)]
    return _Plan(steps, step_iterations(model, config, steps, discovered), math.ceil(needed / group))


def step_iterations(model: nn.Module, config: PipelineConfig, steps: Sequence[Sequence[str]],
                    discovered: Sequence[LayerInfo]) -> list[int]:
    """Fine-tuning iterations of each of a layer-priority run's `steps` (its first steps or all of
    them, in order; `discovered`: `discover_layers` of the model, for the MACs): `finetune_iters`,
    or `weights_only_iters` for a step none of whose layers takes binary inputs, when set; plus
    `iters_per_mac_percent` per percent of the network's multiply-accumulates the step's layers hold."""
    iterations = [config.finetune_iters] * len(steps)
    if config.weights_only_iters is not None:
        binary_inputs = binary_input_layers(_Plan([list(step) for step in steps], iterations, len(steps)),
                                            dict(model.named_modules()), config)
        iterations = [config.finetune_iters if binary_inputs.intersection(step) else config.weights_only_iters
                      for step in steps]
    if config.iters_per_mac_percent:
        macs = {layer.name: layer.macs for layer in discovered}
        percent = 100 / max(1, sum(macs.values()))
        iterations = [n + round(config.iters_per_mac_percent * percent * sum(macs[name] for name in step))
                      for n, step in zip(iterations, steps, strict=True)]
    return iterations


def layer_quantizer(config: PipelineConfig) -> WeightQuantizer:
    """A new instance of the weight quantizer the config names (one per binarized layer)."""
    return weight_quantizer(config.bits, config.weight_quantizer)


def input_binarizer_for(conv: nn.Module, config: PipelineConfig) -> InputBinarizer:
    """A new input binarizer for a binary-input conv, as the config names it (its quantizer, and
    an RPReLU on the conv's output channels with `rprelu`)."""
    assert config.activation_quantizer is not None and isinstance(conv, nn.Conv2d)  # resolved; binary inputs: convs
    return new_input_binarizer(config.activation_quantizer, conv.in_channels,
                               rprelu_channels=conv.out_channels if config.rprelu else None)


def training_iterations(plan: _Plan, config: PipelineConfig, step: int) -> int:
    """Fine-tuning iterations behind step `step`'s checkpoint (0 for the float step 0): every
    step up to it, plus its consolidation."""
    if step == 0:
        return 0
    return sum(plan.iterations[:step]) + config.consolidation_iters


def consolidate(model: nn.Module, train_records: Sequence[ImageRecord], config: PipelineConfig, *,
                num_binary_layers: int, cache: ImageCache | None = None, device: str = "cpu",
                on_iteration: Callable[[IterationReport], None] | None = None,
                should_stop: ShouldStop | None = None, options: TrainOptions | None = None,
                distillation: Distillation | None = None) -> None:
    """Fine-tune `model` in place for `config.consolidation_iters` iterations (fresh AdamW, one
    cosine schedule, `config.learning_rate`).

    The sampling seed depends on the run's seed and the number of binarized layers only, so
    layer priority at step k, all-at-once over k layers and the study's float control at
    the same budget consolidate on the same batches (common random numbers).
    """
    train_detector(
        model, train_records, iterations=config.consolidation_iters,
        batch_size=config.batch_size, learning_rate=config.learning_rate,
        seed=config.seed * 1000 + 500 + num_binary_layers, cache=cache, device=device,
        on_iteration=on_iteration, should_stop=should_stop, options=options, distillation=distillation,
        binarizer_lr_multiplier=config.binarizer_lr_multiplier or 1.0)


def teacher_for(model: nn.Module, config: PipelineConfig, device: str) -> Distillation | None:
    """The job's distillation (`config.distillation_weight`), its teacher a frozen copy of the
    float `model`; None when off."""
    if not config.distillation_weight:
        return None
    return Distillation(frozen_teacher(copy.deepcopy(model), device), config.distillation_weight)


def eligible_layers(model: nn.Module, card: ModelCard, config: PipelineConfig) -> list[LayerInfo]:
    """The Conv2d / Linear layers a run may binarize (see `min_layer_params` and
    `binarize_depthwise`)."""
    return _eligible(discover_layers(model, card.input_size), config)


def _eligible(layers: Sequence[LayerInfo], config: PipelineConfig) -> list[LayerInfo]:
    return [layer for layer in layers
            if layer.num_params >= config.min_layer_params and (config.binarize_depthwise or layer.groups == 1)]


def _meets(step: StepOutcome, float_step: StepOutcome, target: Target, deploy_format: DeployFormat) -> bool:
    """Whether a step's `deploy_format` file meets a compression or latency target (not a
    miss-rate budget). A speedup is against the float model as trained (step 0's export)."""
    if target.min_compression_ratio is not None:
        return step.compression_ratio >= target.min_compression_ratio
    _, latency = step.judged(deploy_format)
    if latency is None:  # not measured: cannot meet a latency target
        return False
    if target.max_latency_ms is not None:
        return latency <= target.max_latency_ms
    assert target.min_speedup is not None
    return float_step.latency_ms is not None and float_step.latency_ms / latency >= target.min_speedup


def _over_budget(step: StepOutcome, float_step: StepOutcome, budget: float, deploy_format: DeployFormat) -> bool:
    """Whether a step's `deploy_format` file misses by more than `budget` MR^-2 over the float
    model as trained (an int8 file that could not be made counts as over)."""
    miss_rate, _ = step.judged(deploy_format)
    return miss_rate is None or miss_rate - float_step.miss_rate > budget


def stops_after(steps: Sequence[StepOutcome], target: Target, deploy_format: DeployFormat = "openvino") -> bool:
    """Whether the run stops after `steps[-1]`: a compression or latency target is met, or the
    miss rate left a miss-rate budget for `target.patience` + 1 steps in a row. A function of the
    steps alone, so a resumed run stops where an uninterrupted one does."""
    if target.max_miss_rate_increase is None:
        return _meets(steps[-1], steps[0], target, deploy_format)
    last = steps[1:][-target.steps_over_budget_to_stop:]
    return (len(last) == target.steps_over_budget_to_stop
            and all(_over_budget(s, steps[0], target.max_miss_rate_increase, deploy_format) for s in last))


def select_step(steps: Sequence[StepOutcome], target: Target,
                deploy_format: DeployFormat = "openvino") -> tuple[int, bool]:
    """(index of the selected step, whether the target was met), judged on each step's
    `deploy_format` file against the float model as trained.

    Compression or latency target: the first step meeting it (else the most compressed, or the
    fastest measured, step). Miss-rate budget: the most compressed step whose miss-rate increase
    stays in budget (step 0 when none does, not even its int8 file).
    """
    if target.max_miss_rate_increase is None:
        for step in steps:
            if _meets(step, steps[0], target, deploy_format):
                return step.index, True
        timed = [s for s in steps if s.judged(deploy_format)[1] is not None]
        if target.speaks_latency and timed:
            return min(timed, key=lambda s: s.judged(deploy_format)[1] or 0.0).index, False
        return max(steps, key=lambda s: s.compression_ratio).index, False
    budget = target.max_miss_rate_increase
    within = [s for s in steps if not _over_budget(s, steps[0], budget, deploy_format)]
    if not within:
        return 0, False
    return max(within, key=lambda s: s.compression_ratio).index, True


def run(
    model: nn.Module,
    card: ModelCard,
    train_records: Sequence[ImageRecord],
    val_records: Sequence[ImageRecord],
    config: PipelineConfig,
    *,
    completed: Sequence[StepOutcome] = (),
    on_step: OnStep | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    device: str = "cpu",
    export_openvino: bool = True,
    train_options: TrainOptions | None = None,
    int8_calibration_images: int = 100,
) -> PipelineResult:
    """Run (or resume) a binarization job.

    model: the float detector as uploaded (`core.checkpoint.load_model*`), card its ModelCard.
    train_records / val_records: `core.data.ImageRecord`s (fine-tuning / evaluation).
    completed: StepOutcomes already committed by an earlier, interrupted run of the same
      config (with their `state` bytes); the run resumes after the last one and repeats
      none of them.
    on_step: called once per newly completed step (step 0 = the float model), in order.
    on_progress: called about every second while a step runs.
    should_stop: polled every fine-tuning iteration; True raises `Cancelled` before the
      step in progress is reported.
    export_openvino: export every step's checkpoint to OpenVINO IR and measure its latency
      (about 1-3 s per step); a failed export is logged and leaves those fields empty.
    train_options: how fine-tuning uses the hardware (`core.train.TrainOptions`: bf16 autocast,
      loader workers...); each step's card records the device and bf16 in its provenance.
    int8_calibration_images: with `deploy_format` openvino-int8, NNCF calibrates each step's int8
      file on the first this many training images (as the API's `?format=openvino-int8` does).
    """
    cache = ImageCache()
    try:
        int8 = _Int8Inputs(train_records[:int8_calibration_images], val_records, cache, config.int8_max_drop,
                           config.int8_after_1bit) if config.deploy_format == INT8 else None
        return _run(model, card, train_records, val_records, config, cache, completed=completed, on_step=on_step,
                    on_progress=on_progress, should_stop=should_stop, device=device, export_openvino=export_openvino,
                    options=train_options or TrainOptions(), int8=int8)
    finally:
        cache.close()  # the training loader's worker processes


def _run(model: nn.Module, card: ModelCard, train_records: Sequence[ImageRecord],
         val_records: Sequence[ImageRecord], config: PipelineConfig, cache: ImageCache, *,
         completed: Sequence[StepOutcome], on_step: OnStep | None, on_progress: OnProgress | None,
         should_stop: ShouldStop | None, device: str, export_openvino: bool, options: TrainOptions,
         int8: _Int8Inputs | None) -> PipelineResult:
    distillation = teacher_for(model, config, device)  # from the float model, also when resuming
    model = copy.deepcopy(model)  # the caller's float model stays as it was
    if config.needs_export and not export_openvino:
        raise ValueError(f"{config.needs_export} needs the per-step OpenVINO export (FLEXBIN_EXPORT_OPENVINO=true)")
    sensitivity = savings = None
    if config.order == "sensitivity":
        sensitivity = _sensitivity(model, card, train_records, config, cache, device)
    if config.order == "latency":
        savings = _latency_savings(model, card, config)
        log.info("latency order: ms saved at 1 bit per layer %s", savings)
    plan = plan_steps(model, card, config, sensitivity, savings, done=[s.layers for s in completed[1:]])
    steps = list(completed)
    if any(s.index != i for i, s in enumerate(steps)):
        raise ValueError("completed steps must be steps 0..n-1 in order")
    progress = _ProgressTracker(plan, config, on_progress, len(steps))

    def report(outcome: StepOutcome) -> None:
        steps.append(outcome)
        if on_step is not None:
            on_step(outcome)

    if steps:
        model = load_state(card, steps[-1].state)
    else:
        report(_measure(model, card, config, 0, [], 0.0, val_records, cache, device,
                        export_openvino=export_openvino, options=options, int8=int8))
        progress.step_done(0)
    modules = dict(model.named_modules())
    binary_inputs = binary_input_layers(plan, modules, config)
    while len(steps) <= len(plan.steps) and not (len(steps) > 1 and stops_after(steps, config.target, config.deploy_format)):
        index = len(steps)
        new_layers = plan.steps[index - 1]
        assert config.activation_quantizer is not None and config.binarizer_lr_multiplier is not None  # resolved
        staged = [name for name in new_layers if config.staged_schedule and name in binary_inputs]
        for name in new_layers:
            if name not in staged:
                binarize_module(modules[name], layer_quantizer(config))
            if name in binary_inputs:
                binarize_input(modules[name], input_binarizer_for(modules[name], config))
        started = time.monotonic()
        stop = _StopFlag(should_stop)
        finetune = functools.partial(
            train_detector, model, train_records, batch_size=config.batch_size,
            learning_rate=config.learning_rate, cache=cache, device=device, should_stop=stop,
            options=options, distillation=distillation, binarizer_lr_multiplier=config.binarizer_lr_multiplier)
        iterations = plan.iterations[index - 1]
        first = iterations // 2 if staged else iterations
        finetune(iterations=first, seed=config.seed * 1000 + index, on_iteration=functools.partial(
            progress.iteration, index, what=STAGES[0] if staged else "fine-tuning"))
        if staged:  # NNCF's staged schedule within the step: inputs first, then weights
            for name in staged:
                binarize_module(modules[name], layer_quantizer(config))
            finetune(iterations=iterations - first, seed=config.seed * 1000 + STAGED_SEED_OFFSET + index,
                     on_iteration=functools.partial(progress.iteration, index, offset=first, what=STAGES[1]))
        if stop.requested:
            raise Cancelled(f"cancelled during step {index}")
        served = model
        if config.consolidation_iters:
            served = copy.deepcopy(model)
            consolidate(served, train_records, config, num_binary_layers=sum(map(len, plan.steps[:index])),
                        cache=cache, device=device, should_stop=stop, options=options, distillation=distillation,
                        on_iteration=functools.partial(progress.iteration, index,
                                                       offset=plan.iterations[index - 1], what="consolidating"))
            if stop.requested:
                raise Cancelled(f"cancelled during step {index}")
        progress.measuring(index, int8 is not None)
        report(_measure(served, card, config, index, new_layers, time.monotonic() - started,
                        val_records, cache, device, chain=model, export_openvino=export_openvino,
                        options=options, int8=int8))
        progress.step_done(index)
    progress.finish(len(steps) - 1)
    selected, met = select_step(steps, config.target, config.deploy_format)
    return PipelineResult(steps=steps, selected_index=selected, target_met=met)


class _StopFlag:
    def __init__(self, should_stop: ShouldStop | None) -> None:
        self.should_stop, self.requested = should_stop, False

    def __call__(self) -> bool:
        if self.should_stop is not None and not self.requested:
            self.requested = bool(self.should_stop())
        return self.requested


def _measure(model: nn.Module, card: ModelCard, config: PipelineConfig, index: int,
             new_layers: list[str], seconds: float, val_records: Sequence[ImageRecord],
             cache: ImageCache, device: str, chain: nn.Module | None = None,
             export_openvino: bool = True, options: TrainOptions | None = None,
             int8: _Int8Inputs | None = None) -> StepOutcome:
    """Pack the model, evaluate what the packed checkpoint serves, export it to OpenVINO and
    time it (with `int8`, also make, evaluate and time its int8 file), and describe the step.

    `chain`: the network the run continues from when it is not `model` (consolidation);
    its latent weights are the step's resume state."""
    started = time.monotonic()
    served, _ = unpack_checkpoint(pack_checkpoint(model, card))
    metrics = evaluate_model(served, val_records, cache=cache, device=device)
    modules = dict(model.named_modules())
    binary = binarized_modules(model)  # layer -> its weight quantizer
    provenance = {**card.provenance, "flexbin": {
        "method": config.method, "order": config.order, "step": index, "seed": config.seed,
        "finetune_iters": config.finetune_iters, "source_architecture": card.architecture}}
    if config.consolidation_iters:
        provenance["flexbin"]["consolidation_iters"] = config.consolidation_iters
    if index:  # how the step was fine-tuned (the float step 0 was not)
        provenance["flexbin"]["training"] = (options or TrainOptions()).provenance(device)
    ratio = compression_ratio(model)
    packed = pack_checkpoint(model, card.model_copy(update={
        "provenance": provenance,
        "metrics": {"miss_rate": metrics.miss_rate, "ap50": metrics.ap50, "compression_ratio": ratio}}))
    binary_float = sum(4 * modules[name].weight.numel() for name in binary)
    binary_packed = sum(q.packed_nbytes(tuple(modules[name].weight.shape)) for name, q in binary.items())
    exported = _export(packed, index, int8) if export_openvino else None
    return StepOutcome(
        index=index, layers=new_layers, binary_layers=list(binary), bits=config.bits,
        compression_ratio=ratio,
        binary_layer_compression=binary_float / binary_packed if binary_packed else None,
        miss_rate=metrics.miss_rate, ap50=metrics.ap50,
        step_seconds=seconds + time.monotonic() - started, checkpoint_bytes=len(packed),
        checkpoint=packed, state=save_state(chain if chain is not None else model),
        fppi_curve=metrics.fppi_curve, binary_input_layers=sorted(activation_quantizers(model)),
        latency_ms=exported.latency_ms if exported else None,
        layer_precision=exported.layers if exported else {},
        openvino=exported.zip if exported else None,
        int8=exported.int8 if exported else None, openvino_int8=exported.int8_zip if exported else None)


@dataclass
class _Int8Inputs:
    """What a step's int8 file is made and judged with: the calibration records (training
    images), the validation records, read through the run's image cache, NNCF's accuracy
    control's `max_drop` (None: plain nncf.quantize), and whether the convs a 1-bit conv feeds
    are int8 too (`int8_after_1bit`: True, False or "auto", both made and one kept)."""

    calibration: Sequence[ImageRecord]
    validation: Sequence[ImageRecord]
    cache: ImageCache
    max_drop: float | None = None
    after_1bit: Int8AfterOneBit = False

    def images(self, records: Sequence[ImageRecord]) -> list[np.ndarray]:
        """RGB float32 [3, H, W] in [0, 1], as `/detect` decodes an upload (made per step from
        the cache's uint8 pixels rather than kept: a hundred full-size images are ~0.4 GB)."""
        return [self.cache.image(r).numpy() for r in records]


@dataclass
class _Exported:
    zip: bytes
    latency_ms: float
    layers: dict[str, dict[str, Any]]
    int8: Int8Metrics | None = None
    int8_zip: bytes | None = None


def _export(packed: bytes, index: int, int8: _Int8Inputs | None = None) -> _Exported | None:
    """The checkpoint's OpenVINO IR zip, its median forward time (1 thread, the export's static
    input shape) and each layer's precision and time; None (logged) when OpenVINO cannot export it.
    With `int8`, also its int8 file and what it measured (left out, logged, when NNCF fails)."""
    try:
        # OpenVINO loads only when a step is exported (a GPU worker may run without it)
        from core.export.openvino import (
            export_checkpoint,
            layer_report,
            layer_times,
            measure_latency,
        )

        export = export_checkpoint(packed)
        latency, runs_as = measure_latency(export, threads=1)
        exported = _Exported(export.zip_bytes(), latency, layer_report(export, runs_as, layer_times(export, runs=5)))
    except Exception:  # a step is still a result without its speed figure
        log.exception("step %d: OpenVINO export failed; no latency recorded", index)
        return None
    if int8 is not None:
        try:
            exported.int8, exported.int8_zip = _int8_file(export, int8)
        except Exception:  # the step stands as trained; no target can be met by its int8 file
            log.exception("step %d: int8 quantization failed; no int8 figures recorded", index)
    return exported


def _int8_file(export: Any, int8: _Int8Inputs) -> tuple[Int8Metrics, bytes]:
    """The int8 file of `export` (`core.export.int8.int8_export`, as `?format=openvino-int8`
    makes it; with `int8.max_drop`, by NNCF's accuracy control on the calibration images, 1 - MR^-2
    the metric) and its MR^-2 / AP@0.5 on the validation split and forward time, measured on the
    IR itself as `/detect` runs it. With `int8.after_1bit` "auto", both scopes are made and one
    kept by `kept_int8_file` (on the calibration images): the validation split, which judges the
    step, plays no part in the choice."""
    from core.export.int8 import AccuracyControl, kept_int8_file
    from core.export.openvino import detection_tensors, evaluate_export

    calibration, validation = int8.images(int8.calibration), int8.images(int8.validation)  # decoded once a step
    truth = [r.boxes for r in int8.calibration]
    if int8.after_1bit != "auto":
        control = None
        if int8.max_drop is not None:

            def metric(detections: list[Any], indices: list[int]) -> float:
                return 1.0 - evaluate_detections(detection_tensors(detections), [truth[i] for i in indices]).miss_rate

            control = AccuracyControl(calibration, metric, int8.max_drop)
        metrics, data, _ = _make_int8(export, int8, calibration, validation, after_1bit=int8.after_1bit,
                                      control=control)
        return metrics, data
    made = {after: _make_int8(export, int8, calibration, validation, after_1bit=after) for after in (False, True)}
    on_calibration = {after: evaluate_export(quantized, calibration, truth).miss_rate
                      for after, (_, _, quantized) in made.items()}
    kept = kept_int8_file({after: (on_calibration[after], metrics.latency_ms) for after, (metrics, _, _) in made.items()})
    variants = [Int8Variant(after_1bit=after, calibration_miss_rate=on_calibration[after], miss_rate=metrics.miss_rate,
                            latency_ms=metrics.latency_ms, kept=after is kept) for after, (metrics, _, _) in made.items()]
    metrics, data, _ = made[kept]
    return metrics.model_copy(update={"variants": variants}), data


def _make_int8(export: Any, int8: _Int8Inputs, calibration: list[np.ndarray], validation: list[np.ndarray], *,
               after_1bit: bool, control: AccuracyControl | None = None) -> tuple[Int8Metrics, bytes, Any]:
    """One int8 file of `export`: what it measured (MR^-2 / AP@0.5 on the `validation` images,
    forward time), its zip and the quantized export."""
    from core.export.int8 import int8_export
    from core.export.openvino import evaluate_export, measure_latency

    quantized = int8_export(export, calibration, accuracy_control=control, int8_after_1bit=after_1bit)
    latency, _ = measure_latency(quantized, threads=1)
    metrics = evaluate_export(quantized, validation, [r.boxes for r in int8.validation])
    data = quantized.zip_bytes()
    return Int8Metrics(miss_rate=metrics.miss_rate, ap50=metrics.ap50, latency_ms=latency, file_bytes=len(data),
                       calibration_images=quantized.spec["quantization"]["calibration_images"],
                       max_drop=int8.max_drop, after_1bit=after_1bit), data, quantized


def _latency_savings(model: nn.Module, card: ModelCard, config: PipelineConfig) -> dict[str, float]:
    """The `latency` order's table: ms each eligible layer saves at 1 bit on this CPU (1 thread)."""
    # OpenVINO loads only for jobs that time their layers
    from core.export.one_bit import layer_savings

    return layer_savings(model, card, [layer.name for layer in eligible_layers(model, card, config)])


def _sensitivity(model: nn.Module, card: ModelCard, records: Sequence[ImageRecord],
                 config: PipelineConfig, cache: ImageCache, device: str) -> dict[str, float]:
    chosen = sorted(records, key=lambda r: r.name)[: SENSITIVITY_BATCHES * config.batch_size]
    batches = fixed_batches(chosen, cache, config.batch_size)
    layers = eligible_layers(model, card, config)
    return measure_sensitivity(model, layers, lambda m: detection_loss(m, batches, device), layer_quantizer(config))


class _ProgressTracker:
    """Turns iteration reports into step / percent / ETA, at most once per interval."""

    def __init__(self, plan: _Plan, config: PipelineConfig, on_progress: OnProgress | None,
                 done_steps: int) -> None:
        self.on_progress = on_progress
        self.total_steps = plan.expected_steps + 1
        # Work units: fine-tuning iterations, plus one iteration's worth per evaluation.
        self.work = [1] + [n + config.consolidation_iters + 1 for n in plan.iterations]
        self.total = sum(self.work[: self.total_steps])
        self.done = sum(self.work[: min(done_steps, self.total_steps)])
        # (time, work done) at the first report: the rate is measured from there, so the set-up
        # before it (loading, the float model's evaluation, a `latency` job's layer timing) is
        # not read as slow fine-tuning (it made a just-started job's ETA say days).
        self.anchor: tuple[float, int] | None = None
        self.last = 0.0

    def iteration(self, step: int, it: IterationReport, offset: int = 0, what: str = "fine-tuning") -> None:
        """`offset`: iterations of the step already done before this loop (a staged step's first
        half, consolidation); `what`: the loop, as the progress message names it."""
        now = time.monotonic()
        if self.on_progress is None or (now - self.last < PROGRESS_INTERVAL_S and it.iteration < it.total):
            return
        self.last = now
        self._emit(step, it.iteration, it.total, self.done + offset + it.iteration,
                   f"{what} {it.iteration}/{it.total}")

    def measuring(self, step: int, int8: bool) -> None:
        """The step's training is done; its evaluation and export (and int8 file) run now."""
        if self.on_progress is not None:
            self._emit(step, 0, 0, self.done + self.work[step] - 1,
                       "evaluating and exporting" + (" (and making its int8 file)" if int8 else ""))

    def step_done(self, step: int) -> None:
        self.done += self.work[step] if step < len(self.work) else 0
        if self.on_progress is not None:
            self._emit(step, 0, 0, self.done, "step done")

    def finish(self, step: int) -> None:
        self.total = self.done  # the run may end before or after the planned step count
        self.total_steps = step + 1
        if self.on_progress is not None:
            self._emit(step, 0, 0, self.done, "finished")

    def _emit(self, step: int, iteration: int, total_iterations: int, done: int, message: str) -> None:
        assert self.on_progress is not None
        total_steps = max(self.total_steps, step + 1)
        total = max(self.total, done)
        now = time.monotonic()
        if self.anchor is None:
            self.anchor = (now, done)
        since, done_then = self.anchor
        rate = (done - done_then) / (now - since) if now > since else 0.0
        eta = (total - done) / rate if rate > 0 else None
        self.on_progress(Progress(
            step=step, total_steps=total_steps, iteration=iteration,
            total_iterations=total_iterations, percent=round(100.0 * done / total, 2),
            eta_seconds=eta, message=message))
