"""The claim study's design and arms, and how one (fold, seed, arm) run is carried out.

Arms (every one starts from the fold's float detector and fine-tunes on the fold's training
images only):
- `inverse_depth`, `forward`, `sensitivity`: layer priority in that order (one layer per
  step, `finetune_iters` per step, a fresh AdamW and cosine schedule per step, as jobs do);
- `all_at_once`: the same k layers as `inverse_depth`'s first k steps, binarized in one step
  and fine-tuned for k x `finetune_iters`;
- `float_control`: nothing binarized, fine-tuned in the same segments with the same seeds
  as layer priority, so "more training" is credited to neither method.

Fairness (option (b) of issue 12): at every matched point k each arm's evaluated network is
consolidated, i.e. fine-tuned `consolidation_iters` more iterations with one fresh AdamW and
one cosine schedule on the same batches (`core.pipeline.consolidate`). Every arm at point k
has then had k x `finetune_iters` + `consolidation_iters` iterations and the same final
anneal (`planned_iterations` checks it from the plans, without training).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from bench.study.drift import layer_output_errors
from core.binary import binarize_module
from core.checkpoint import ModelCard, load_state, pack_checkpoint, unpack_checkpoint
from core.data import ImageRecord, eval_transforms, kfold_records, split_records
from core.detection_metrics import evaluate_detections
from core.job_spec import PipelineConfig, Target
from core.models.registry import DEFAULT_ARCHITECTURE
from core.pipeline import (
    StepOutcome,
    consolidate,
    eligible_layers,
    plan_steps,
    run,
    training_iterations,
)
from core.priority import ORDERS, discover_layers
from core.train import DEFAULT_RECIPE, ImageCache, predict_records, train_detector

PRIMARY_ORDER = "inverse_depth"  # the paper's layer-wise priority
BASELINE = "all_at_once"
CONTROL = "float_control"
# The study compares orders on 1-bit weights; "latency" ranks layers by the time their binary
# activations save, so it has nothing to rank here (the pipeline refuses it without them).
STUDY_ORDERS = tuple(order for order in ORDERS if order != "latency")
ARMS = (*STUDY_ORDERS, BASELINE, CONTROL)
# Every eligible layer: 32x is out of reach of a 1-bit model with float BatchNorm and scales.
ALL_LAYERS = Target(min_compression_ratio=32.0)


class StudyUnavailable(RuntimeError):
    """The design asks for a capability this build of FlexBin does not have yet."""


class StudyDesign(BaseModel):
    """Everything that defines the study's runs; its JSON names the results folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str = DEFAULT_ARCHITECTURE
    builder_kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = Field(default=False, description="every fold starts from one given float "
                             "model (no float training per fold)")
    folds: int = Field(default=4, ge=2)
    evaluated_folds: tuple[int, ...] | None = Field(default=None, description="None: all folds")
    seeds: int = Field(default=2, ge=1)
    float_iterations: int = Field(default=int(DEFAULT_RECIPE["iterations"]), ge=1)
    finetune_iters: int = Field(default=20, ge=1)
    consolidation_iters: int = Field(default=40, ge=1)
    batch_size: int = Field(default=8, ge=1)
    bits: int = Field(default=1, ge=1, le=4)
    activation_bits: int | None = Field(default=None, description="binary activations of "
                                        "binarized layers (issue 11's job option); None: weights only")
    min_layer_params: int = Field(default=1024, ge=0)
    matched_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    learning_rates: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    inner_val_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    drift_images: int = Field(default=8, ge=1)
    resamples: int = Field(default=2000, ge=2000)
    bootstrap_seed: int = 20261130
    margin: float = 0.03

    @model_validator(mode="after")
    def _consistent(self) -> StudyDesign:
        if self.evaluated_folds is not None and not set(self.evaluated_folds) <= set(range(self.folds)):
            raise ValueError(f"evaluated_folds must be within 0..{self.folds - 1}")
        if not self.matched_fractions or any(not 0 < q <= 1 for q in self.matched_fractions) \
                or max(self.matched_fractions) != 1.0:
            raise ValueError("matched_fractions must lie in (0, 1] and include 1 (every layer)")
        if not self.learning_rates:
            raise ValueError("learning_rates needs at least one rate")
        return self

    @property
    def fold_indices(self) -> list[int]:
        return list(self.evaluated_folds if self.evaluated_folds is not None else range(self.folds))


def folds_of(records: Sequence[ImageRecord], design: StudyDesign
             ) -> dict[int, tuple[list[ImageRecord], list[ImageRecord]]]:
    """{fold: (training records, evaluation records)} of the folds the design evaluates."""
    every = kfold_records(records, folds=design.folds)
    return {f: every[f] for f in design.fold_indices}


def inner_split(train_records: Sequence[ImageRecord], design: StudyDesign
                ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The fold's training images split again (by name hash) for choosing learning rates."""
    return split_records(train_records, val_fraction=design.inner_val_fraction)


def evaluation_units(records: Sequence[ImageRecord], design: StudyDesign) -> list[tuple[int, int, str]]:
    """(fold, seed, image name) of every evaluation the study makes per arm and checkpoint."""
    return [(f, s, r.name) for f, (_, evaluate) in folds_of(records, design).items()
            for s in range(design.seeds) for r in evaluate]


def pipeline_config(design: StudyDesign, arm: str, *, learning_rate: float, seed: int,
                    num_layers: int | None = None) -> PipelineConfig:
    """The pipeline configuration of an arm (the control uses layer priority's, for its
    segments, seeds and consolidation)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {list(ARMS)}")
    kwargs: dict[str, Any] = {
        "target": ALL_LAYERS, "finetune_iters": design.finetune_iters, "seed": seed,
        "batch_size": design.batch_size, "learning_rate": learning_rate, "bits": design.bits,
        "min_layer_params": design.min_layer_params, "consolidation_iters": design.consolidation_iters}
    if design.activation_bits is not None:
        if "activation_bits" not in PipelineConfig.model_fields:
            raise StudyUnavailable("binary activations need the pipeline's activation_bits option "
                                   "(issue 11, OpenVINO), which this build does not have yet")
        kwargs["activation_bits"] = design.activation_bits
    # validated by pydantic: only STUDY_ORDERS reach `order`
    kwargs["order"] = arm if arm in STUDY_ORDERS else PRIMARY_ORDER
    if arm == BASELINE:
        return PipelineConfig(method="all_at_once", num_layers=num_layers, **kwargs)
    return PipelineConfig(method="layer_priority", **kwargs)


def matched_points(model: nn.Module, card: ModelCard, design: StudyDesign) -> dict[int, int]:
    """{layer-priority step index: binarized layers} at each matched fraction of the eligible
    layers (the first step reaching it); all-at-once binarizes the same count of layers."""
    config = pipeline_config(design, PRIMARY_ORDER, learning_rate=1e-3, seed=0)
    plan = plan_steps(model, card, config)
    cumulative, total = [], 0
    for step in plan.steps:
        total += len(step)
        cumulative.append(total)
    points = {}
    for q in sorted(design.matched_fractions):
        index = next(i for i, c in enumerate(cumulative) if c >= q * total - 1e-9)
        points[index + 1] = cumulative[index]
    return points


def consolidated_points(arm: str, points: dict[int, int]) -> dict[int, int]:
    """Where an arm is consolidated and compared: the primary order, the baseline and the
    control at every matched point; the other orders only where every order binarizes the
    same layers (all of them), the one point at which orders share a compression ratio."""
    if arm in (PRIMARY_ORDER, BASELINE, CONTROL):
        return dict(points)
    deepest = max(points)
    return {deepest: points[deepest]}


def planned_iterations(model: nn.Module, card: ModelCard, design: StudyDesign) -> dict[str, dict[int, int]]:
    """{arm: {binarized layers k: fine-tuning iterations behind its checkpoint}} from the
    pipeline's plans, without training."""
    points = matched_points(model, card, design)
    out: dict[str, dict[int, int]] = {}
    for arm in ARMS:
        out[arm] = {}
        for step, k in consolidated_points(arm, points).items():
            if arm == BASELINE:
                config = pipeline_config(design, arm, learning_rate=1e-3, seed=0, num_layers=k)
                out[arm][k] = training_iterations(plan_steps(model, card, config), config, 1)
            else:
                config = pipeline_config(design, arm, learning_rate=1e-3, seed=0)
                # the order does not change the iterations; a flat sensitivity stands in for the measured one
                flat = {layer.name: 0.0 for layer in eligible_layers(model, card, config)}
                out[arm][k] = training_iterations(plan_steps(model, card, config, flat), config, step)
    return out


@dataclass
class Evaluation:
    """One evaluated checkpoint of an arm.

    detections[i]: {"boxes": FloatTensor[N, 4] x1, y1, x2, y2 in the pixels of evaluation
    image i, "scores": FloatTensor[N]}, best first. layer_errors: relative output error of
    every Conv2d / Linear layer against the float network on the fixed drift images
    (`bench.study.drift`); errors_at_binarization: the same just after this checkpoint's new
    layers were binarized, before any fine-tuning of the step ({} when not measured).
    """

    label: str  # "step<j>" (layer priority, unconsolidated) or "consolidated<k>"
    num_binary_layers: int
    binary_layers: list[str]
    compression_ratio: float
    iterations: int
    miss_rate: float
    detections: list[dict[str, Tensor]] = field(repr=False)
    layer_errors: dict[str, float] = field(default_factory=dict)
    errors_at_binarization: dict[str, float] = field(default_factory=dict)


@dataclass
class ArmRun:
    arm: str
    learning_rate: float
    seed: int
    layer_order: list[str]
    evaluations: list[Evaluation]
    seconds: float


def run_arm(design: StudyDesign, arm: str, float_model: nn.Module, card: ModelCard,
            train_records: Sequence[ImageRecord], eval_records: Sequence[ImageRecord], *,
            learning_rate: float, seed: int, deepest_only: bool = False, evaluate_steps: bool = True,
            measure_drift: bool = True, device: str = "cpu") -> ArmRun:
    """Run one arm from the float model: fine-tune on `train_records`, evaluate every
    checkpoint the study compares (and, with `evaluate_steps`, every layer-priority step) on
    `eval_records`. `deepest_only`: only the all-layers point (learning-rate tuning)."""
    started = time.monotonic()
    cache = ImageCache()
    transform = eval_transforms()
    drift_images = [transform(cache.image(r)) if transform else cache.image(r)
                    for r in list(eval_records)[:design.drift_images]]
    drift_layers = [layer.name for layer in discover_layers(float_model, card.input_size)]
    points = matched_points(float_model, card, design)
    if deepest_only:
        points = {max(points): points[max(points)]}
    wanted = consolidated_points(arm, points)
    iterations = planned_iterations(float_model, card, design)[arm]
    config = pipeline_config(design, arm, learning_rate=learning_rate, seed=seed)
    evaluations: list[Evaluation] = []

    def errors(net: nn.Module) -> dict[str, float]:
        return layer_output_errors(net, float_model, drift_images, drift_layers) if measure_drift else {}

    def evaluate(label: str, served: nn.Module, binary_layers: list[str], ratio: float, its: int,
                 at_binarization: dict[str, float]) -> None:
        detections = predict_records(served, eval_records, cache=cache, device=device)
        miss_rate = evaluate_detections(detections, [r.boxes for r in eval_records]).miss_rate
        evaluations.append(Evaluation(label, len(binary_layers), binary_layers, ratio, its, miss_rate,
                                      detections, errors(served), at_binarization))

    def served_of(outcome: StepOutcome) -> nn.Module:
        return unpack_checkpoint(outcome.checkpoint)[0]

    def binarized(net: nn.Module, layers: Sequence[str]) -> nn.Module:
        """A copy of `net` with `layers` binarized now, nothing trained yet."""
        net = copy.deepcopy(net)
        modules = dict(net.named_modules())
        for name in layers:
            binarize_module(modules[name], design.bits)
        return net

    at_binarization_measurable = measure_drift and design.activation_bits is None
    if arm in STUDY_ORDERS:
        chain = config.model_copy(update={"consolidation_iters": 0})
        steps: list[StepOutcome] = []
        stop_after = max(wanted)

        def on_step(outcome: StepOutcome) -> None:
            steps.append(outcome)
            if not evaluate_steps:
                return
            at_bin = {}
            if at_binarization_measurable and outcome.index:
                at_bin = errors(binarized(load_state(card, steps[-2].state), outcome.layers))
            evaluate(f"step{outcome.index}", served_of(outcome), outcome.binary_layers,
                     outcome.compression_ratio, outcome.index * config.finetune_iters, at_bin)

        # (no OpenVINO export per step: the study compares miss rates, not latency)
        run(float_model, card, train_records, eval_records, chain, on_step=on_step, device=device,
            export_openvino=False)
        for step, k in wanted.items():
            net = load_state(card, steps[step].state)
            consolidate(net, train_records, config, num_binary_layers=k, cache=cache, device=device)
            evaluate(f"consolidated{k}", unpack_checkpoint(pack_checkpoint(net, card))[0],
                     steps[step].binary_layers, steps[step].compression_ratio, iterations[k], {})
        order = [name for s in steps[1:stop_after + 1] for name in s.layers]
    elif arm == BASELINE:
        order = []
        for k in wanted.values():
            baseline = pipeline_config(design, arm, learning_rate=learning_rate, seed=seed, num_layers=k)
            outcomes: list[StepOutcome] = []
            run(float_model, card, train_records, eval_records, baseline, on_step=outcomes.append, device=device,
                export_openvino=False)
            last = outcomes[-1]
            at_bin = errors(binarized(float_model, last.binary_layers)) if at_binarization_measurable else {}
            evaluate(f"consolidated{k}", served_of(last), last.binary_layers, last.compression_ratio,
                     iterations[k], at_bin)
            order = last.layers
    else:  # the float control: layer priority's segments and seeds, nothing binarized
        net = copy.deepcopy(float_model)
        for step in range(1, max(wanted) + 1):
            train_detector(net, train_records, iterations=config.finetune_iters, batch_size=config.batch_size,
                           learning_rate=config.learning_rate, seed=config.seed * 1000 + step,
                           cache=cache, device=device)
            if step in wanted:
                branch = copy.deepcopy(net)
                consolidate(branch, train_records, config, num_binary_layers=wanted[step], cache=cache,
                            device=device)
                evaluate(f"consolidated{wanted[step]}", branch.eval(), [], 1.0, iterations[wanted[step]], {})
        order = []
    return ArmRun(arm, learning_rate, seed, order, evaluations, time.monotonic() - started)


def choose_learning_rate(inner_miss_rates: dict[float, float]) -> float:
    """The pre-registered choice: the lowest inner-validation MR^-2; a tie goes to the
    smaller rate."""
    if not inner_miss_rates:
        raise ValueError("no tuning results")
    return min(inner_miss_rates, key=lambda lr: (inner_miss_rates[lr], lr))
