"""A binarization job as data: its options (`PipelineConfig`) and what each step measured
(`StepMetrics`).

Pydantic only, no torch: the API validates job requests and answers with step records from
here without loading the ML stack. Each concept is written once:

- a new job option is a field of `PipelineConfig` with a description (`POST /jobs` takes it,
  the job row stores it in `jobs.config`, `core.pipeline.run` reads it, and
  `python -m tools.reference_docs` lists it in docs/job-options.md);
- a new step metric is a field of `StepMetrics` (or of `CheckpointMetrics` when a
  checkpoint also carries it), plus its column in `service/store/tables.py` and a migration.
  `core.pipeline.StepOutcome`, `api.schemas.JobStepPublic` and `CheckpointPublic` build on
  these classes, and the store's rows are read back with `from_attributes`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Method = Literal["layer_priority", "all_at_once"]
Order = Literal["inverse_depth", "forward", "sensitivity", "latency"]
ACTIVATION_BITS = (1, 32)
"""Bits of a binarized layer's inputs: 32 = float (weights-only binarization), 1 = binary."""
WeightQuantizerName = Literal["sign", "kbit"]
"""The registered weight quantizers (`core.binary.quantizers`; a test keeps the two equal)."""
ActivationQuantizerName = Literal["rsign", "scale_threshold"]
"""The registered input binarizers (`core.binary.activation`; a test keeps the two equal)."""
DeployFormat = Literal["openvino", "openvino-int8"]
"""The OpenVINO files of a checkpoint: as trained, or its NNCF int8 IR (1-bit layers stay 1-bit)."""
INT8: DeployFormat = "openvino-int8"
Int8AfterOneBit = bool | Literal["auto"]
BINARY_INPUT_DEFAULTS: dict[str, Any] = {"activation_quantizer": "scale_threshold", "binarizer_lr_multiplier": 100.0}
"""How a job with `activation_bits` 1 binarizes inputs unless it says otherwise: what measured best in
`python -m bench.distillation` (one seed, pedestrian_adas_0002 at 192x336, two layers at 600 iterations:
validation MR^-2 0.097 and 0.099 with seeds 0 and 1, against rsign at 1x's 0.279 and 0.330; float 0.121)."""


def default_weight_quantizer(bits: int) -> WeightQuantizerName:
    """The weight quantizer a job gets for `bits` when it names none: `sign` for 1, `kbit` above."""
    return "sign" if bits == 1 else "kbit"


TARGET_FIELDS = ("min_compression_ratio", "max_miss_rate_increase", "max_latency_ms", "min_speedup")


class Target(BaseModel):
    """Where to stop: exactly one of min_compression_ratio, max_miss_rate_increase, max_latency_ms and
    min_speedup (TARGET_FIELDS) is set; a miss-rate budget may add its `patience`. The latency
    targets are checked on each step's measured latency (`CheckpointMetrics.latency_ms`, or `int8.latency_ms` with `deploy_format`
    openvino-int8), so they need the per-step OpenVINO export."""

    model_config = ConfigDict(extra="forbid")

    min_compression_ratio: float | None = Field(
        default=None, gt=1.0, le=32.0, description="Stop at the first step whose packed checkpoint is this many "
        "times smaller than the float32 one.")
    max_miss_rate_increase: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Go on while MR^-2 stays within this much of the float "
        "model's; select the most compressed step inside the budget.")
    max_latency_ms: float | None = Field(
        default=None, gt=0.0, le=60_000.0, description="Stop at the first step whose exported model's forward "
        "(1 thread, the worker's CPU) takes at most this many ms.")
    min_speedup: float | None = Field(
        default=None, gt=1.0, le=100.0, description="Stop at the first step whose exported model is this many times "
        "faster than the job's float model (step 0), as measured on the worker's CPU.")
    patience: int | None = Field(
        default=None, ge=0, le=1000, description="With max_miss_rate_increase only: stop after this many "
        "consecutive steps over the budget plus one (default 0: at the first). On a small validation split "
        "MR^-2 moves by several points from step to step, and later steps can come back inside the budget; "
        "the selection is still the most compressed step inside it.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        if sum(getattr(self, name) is not None for name in TARGET_FIELDS) != 1:
            raise ValueError(f"target must set exactly one of {', '.join(TARGET_FIELDS)}")
        if self.patience is not None and self.max_miss_rate_increase is None:
            raise ValueError("target.patience applies only to a max_miss_rate_increase target")
        return self

    @property
    def steps_over_budget_to_stop(self) -> int:
        """Consecutive steps over a miss-rate budget after which the run stops."""
        return 1 + (self.patience or 0)

    @property
    def speaks_latency(self) -> bool:
        """Whether the target is checked on measured latency (needs the per-step export)."""
        return self.max_latency_ms is not None or self.min_speedup is not None

    def public(self) -> dict[str, float]:
        """The target as a client wrote it: only the fields that are set."""
        return self.model_dump(exclude_none=True)


class PipelineConfig(BaseModel):
    """Everything that defines a binarization run; stored with the job as JSON.

    An option sent as `null` takes its default (clients may spell "no preference" either way).
    """

    model_config = ConfigDict(extra="forbid")

    target: Target = Field(description="Where the job stops and which step it selects (below).")
    method: Method = Field(
        default="layer_priority", description="layer_priority (the paper's: one group of layers per step, each "
        "step fine-tuned and measured) or all_at_once (the XNOR/BWN-style baseline: the layers the target needs "
        "binarized together, then fine-tuned with the same total iteration budget).")
    order: Order = Field(
        default="inverse_depth", description="Which layer next: inverse_depth (the paper's, deepest first), "
        "forward (shallowest first), sensitivity (least loss per saved bit, measured) or latency (most time "
        "saved at 1 bit on the worker's CPU, measured once per job; needs activation_bits 1).")
    bits: int = Field(default=1, ge=1, le=4, description="Bits per binarized weight.")
    weight_quantizer: WeightQuantizerName | None = Field(
        default=None,
        description="How each layer's weights are binarized (a registered weight quantizer): `sign` "
        "(1 bit, per-channel α = mean|W|) or `kbit` (`bits` binary bases, alternating fit). Default: "
        "sign for bits 1, kbit for more.")
    finetune_iters: int = Field(default=200, ge=0, le=100_000,
                                description="Fine-tuning iterations (batches) after each step's binarization.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seeds the fine-tuning batches (the same "
                      "seed, data and options give the same batches; the float arithmetic still differs by CPU).")
    batch_size: int = Field(default=8, ge=1, le=256, description="Fine-tuning batch size.")
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0, description="Fine-tuning learning rate (AdamW, "
                                 "cosine decay within each step). A pretrained detector wants about 1e-4.")
    min_layer_params: int = Field(
        default=1024, ge=0,
        description="Layers with fewer weights stay float (default 1024; 0 = every layer): packing "
        "them saves at most a few KB, while binarizing a detector's first conv or its 1x1 output "
        "heads costs accuracy (XNOR-Net keeps first and last layers float for the same reason).")
    num_layers: int | None = Field(
        default=None, ge=1, le=10_000,
        description="all_at_once only: binarize exactly this many layers (the first ones of "
        "`order`) instead of as many as the target needs.")
    layers_per_step: int = Field(
        default=1, ge=1, le=10_000,
        description="layer_priority: binarize this many consecutive layers (of `order`) per step, "
        "then fine-tune once; 1 = the paper's one layer per step. Larger groups make deep "
        "networks affordable (a 40-layer detector in 10 steps); every step is still measured. "
        "all_at_once gets the iterations of the layer-priority steps it is compared with.")
    binarize_depthwise: bool = Field(
        default=False,
        description="Also binarize depthwise / grouped convolutions (groups > 1): they hold few "
        "weights (2.4 % of pedestrian_adas_0002's) and lose much accuracy at 1 bit (3x3 = 9 weights "
        "share one scale per channel), so by default they stay float like the first conv.")
    consolidation_iters: int = Field(
        default=0, ge=0, le=100_000,
        description="0 = off. Otherwise each step's checkpoint comes from a copy of the network "
        "fine-tuned this many more iterations (fresh AdamW, one cosine schedule) on the step's "
        "layer set; the next step continues from the unconsolidated network, so layer priority "
        "at step k and all-at-once over the same k layers get equal iterations and an equal "
        "final anneal (the claim study's fair setting).")
    activation_bits: int = Field(
        default=32,
        description="32: binarize weights only (inputs stay float); 1: every binarized layer that can also "
        "takes binary inputs H(x - τ) with a learnable threshold (core.binary.activation), so it runs as a "
        "1-bit XNOR-popcount convolution once exported (dense Conv2d with a multiple of 8 input channels; "
        "other layers keep float inputs).")

    binary_input_layers: int | None = Field(
        default=None, ge=0, le=10_000,
        description="activation_bits 1 only: at most this many binarized layers (the first of `order` that can) take "
        "binary inputs; the layers binarized after them get 1-bit weights with float inputs, which are 1 bit a weight "
        "in the OpenVINO file too but run as float convolutions. So a job can put the 1-bit kernels where they save "
        "time (order latency) and still shrink the rest of the file. null: every binarized layer that can.")
    weights_only_iters: int | None = Field(
        default=None, ge=0, le=100_000,
        description="activation_bits 1 only: fine-tuning iterations of a step whose layers all keep float inputs (the "
        "weights-only layers past binary_input_layers, or layers that cannot take binary ones) instead of "
        "finetune_iters. 1-bit weights alone cost less accuracy than binary inputs, so those steps can be shorter "
        "and the job faster. null: finetune_iters.")
    iters_per_mac_percent: int | None = Field(
        default=None, ge=0, le=10_000,
        description="More fine-tuning where a step binarizes more of the network's compute: a step gets this many "
        "iterations per percent of the network's conv and linear multiply-accumulates its layers hold, on top of "
        "finetune_iters (or weights_only_iters). A deep-first order binarizes heads and extra layers (well under 1 % "
        "each) long before the backbone's pointwise convs (up to 10 %), so a small finetune_iters with this option "
        "spends the job's time where accuracy breaks. null: every step the same.")
    activation_quantizer: ActivationQuantizerName | None = Field(
        default=None,
        description="activation_bits 1 only: how inputs are binarized (core.binary.activation). rsign: H(x - τ_c), a "
        "learnable threshold per channel (ReActNet's RSign in {0, 1} form); scale_threshold: NNCF's s·H(x - s·t_c), "
        "a learnable scale per layer started at the 99.9th percentile of its input, so binary inputs keep the float "
        "inputs' magnitude. Both export to the same 1-bit convolution. Default: scale_threshold with activation_bits "
        "1 (it measured best: bench/results/README.md, distillation screen), rsign otherwise (unused).")
    staged_schedule: bool = Field(
        default=False,
        description="activation_bits 1 only: NNCF's staged schedule within each step. The step's binary-input layers "
        "first take binary inputs with float weights for half its fine-tuning iterations, then their weights are "
        "binarized too for the other half (its weights-only layers, past binary_input_layers, at once); false: both "
        "at once, all iterations.")
    rprelu: bool = Field(
        default=False,
        description="activation_bits 1 only: each binary-input conv's output also goes through ReActNet's RPReLU "
        "(PReLU(y - γ_c) + ζ_c, per output channel; core.binary.activation.RPReLU), in front of the network's own "
        "activation and started as the identity; its parameters learn at the binarizers' learning rate. "
        "Exported as plain elementwise ops after the 1-bit convolution.")
    binarizer_lr_multiplier: float | None = Field(
        default=None, gt=0.0, le=1000.0,
        description="activation_bits 1 only: the input binarizers' thresholds (and scales) learn at this times "
        "learning_rate (NNCF's compression_lr_multiplier). At a pretrained detector's 1e-4 a threshold moves a few "
        "hundredths in a step's iterations. Default: 100 with activation_bits 1 (it measured best with "
        "scale_threshold), 1 otherwise.")
    distillation_weight: float = Field(
        default=0.0, ge=0.0, le=100.0,
        description="0 = off. Otherwise fine-tuning also learns the job's frozen float model's predictions on each "
        "batch (core.distillation: class scores by KL at temperature 2, box regressions on its confident priors), "
        "this weight times that loss added to the detector's own.")
    deploy_format: DeployFormat = Field(
        default="openvino",
        description="The file of each step that the target and the selection judge. openvino: the checkpoint as "
        "trained. openvino-int8: its NNCF int8 IR (`?format=openvino-int8`: 1-bit layers stay 1-bit, the other "
        "convs int8), made in the job for every step, step 0 included, then evaluated on the validation split and "
        "timed; the step's `int8` figures hold what was measured and the file is stored with its checkpoint. A "
        "binary-input job's early layers stay float as trained and only reach int8 in that file, so there it is "
        "the fast one. Costs about 10-20 s a step; needs the per-step OpenVINO export.")
    int8_max_drop: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="deploy_format openvino-int8 only: make each step's int8 file with NNCF's accuracy control "
        "(`nncf.quantize_with_accuracy_control`): convs go back to float, the most harmful first, until the file's "
        "MR^-2 on the calibration (training) images is at most this much above the checkpoint's as trained. The "
        "validation split stays out of it, so the step's int8 figures still judge it fairly. A float conv among int8 "
        "ones costs time, so the file can end up slower than plain int8. null: plain nncf.quantize. Costs about "
        "10 s more a step (measured on pedestrian_adas_0002 with 98 calibration images).")
    int8_after_1bit: Int8AfterOneBit = Field(
        default=False,
        description="deploy_format openvino-int8 only: the int8 file also quantizes the convs a 1-bit conv feeds. By "
        "default they stay float, since their u8 quantizer cannot fuse into the 1-bit conv and runs alone; that "
        "measured faster and more accurate on an AMX Xeon's checkpoints, but neither held on every checkpoint "
        "(bench.ceiling's `_int8` and `_int8_fusing` rows of each checkpoint compare the two). \"auto\": the job "
        "makes both files every step and keeps the one with the lower MR^-2 on the calibration (training) images, "
        "the faster on a tie; the validation split stays out of the choice (the step's `int8.variants` report both). "
        "Costs one more quantization and evaluation a step, about 10 s. Measured on issue 19's recipe (4 choices, 2 "
        "seeds): it agreed with the validation split twice and kept the worse file twice (seed 3's step 19: 0.186 kept, "
        "0.148 the other), so the training images, which the network was fine-tuned on, do not tell the two apart; "
        "there `true` was within the accuracy bar on step 19 in 5 seeds of 5.")

    @property
    def needs_export(self) -> str | None:
        """What in the job needs the per-step OpenVINO export (a latency target, the latency order,
        deploy_format openvino-int8), in words; None when nothing does."""
        needs = [what for what, needed in (("a latency target", self.target.speaks_latency),
                                           ("the latency order", self.order == "latency"),
                                           ("deploy_format openvino-int8", self.deploy_format == INT8)) if needed]
        return " and ".join(needs) or None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data

    @model_validator(mode="after")
    def _quantizer_fits_bits(self) -> PipelineConfig:
        if self.weight_quantizer is None:
            self.weight_quantizer = default_weight_quantizer(self.bits)
        elif self.weight_quantizer == "sign" and self.bits != 1:
            raise ValueError(f"weight_quantizer sign has 1 bit per weight, not bits={self.bits} (kbit has k)")
        return self

    @model_validator(mode="after")
    def _binarizer_defaults(self) -> PipelineConfig:
        binary_inputs = self.activation_bits == 1
        if self.activation_quantizer is None:
            self.activation_quantizer = BINARY_INPUT_DEFAULTS["activation_quantizer"] if binary_inputs else "rsign"
        if self.binarizer_lr_multiplier is None:
            self.binarizer_lr_multiplier = BINARY_INPUT_DEFAULTS["binarizer_lr_multiplier"] if binary_inputs else 1.0
        return self

    @field_validator("activation_bits")
    @classmethod
    def _activation_bits(cls, value: int) -> int:
        if value not in ACTIVATION_BITS:
            raise ValueError(f"activation_bits must be 1 (binary inputs) or 32 (float inputs), got {value}")
        return value

    @model_validator(mode="after")
    def _method_fits_target(self) -> PipelineConfig:
        if self.order == "latency" and self.activation_bits != 1:
            raise ValueError("order latency needs activation_bits 1: only layers with binary inputs run faster "
                             "(1-bit weights alone run as float convolutions)")
        if self.method == "all_at_once" and self.target.min_compression_ratio is None \
                and self.num_layers is None:
            raise ValueError("method all_at_once needs target.min_compression_ratio (or "
                             "num_layers): a miss-rate budget has no single layer set")
        if self.method == "layer_priority" and self.num_layers is not None:
            raise ValueError("num_layers applies to method all_at_once only")
        if self.activation_quantizer != "rsign" and self.activation_bits != 1:
            raise ValueError(f"activation_quantizer {self.activation_quantizer} needs activation_bits 1: with float "
                             "inputs nothing binarizes them")
        if self.binarizer_lr_multiplier != 1.0 and self.activation_bits != 1:
            raise ValueError("binarizer_lr_multiplier needs activation_bits 1: with float inputs there is no binarizer")
        if self.rprelu and self.activation_bits != 1:
            raise ValueError("rprelu needs activation_bits 1: it follows a binary-input convolution")
        if self.binary_input_layers is not None and self.activation_bits != 1:
            raise ValueError("binary_input_layers needs activation_bits 1: with float inputs no layer takes binary ones")
        if self.weights_only_iters is not None and self.activation_bits != 1:
            raise ValueError("weights_only_iters needs activation_bits 1: with float inputs every step is weights-only "
                             "(finetune_iters sets its iterations)")
        if self.staged_schedule and self.activation_bits != 1:
            raise ValueError("staged_schedule needs activation_bits 1: it binarizes inputs before weights")
        if self.int8_max_drop is not None and self.deploy_format != INT8:
            raise ValueError("int8_max_drop needs deploy_format openvino-int8: it is how the job makes each step's int8 "
                             "file")
        if self.int8_after_1bit and self.deploy_format != INT8:
            raise ValueError("int8_after_1bit needs deploy_format openvino-int8: it is how the job makes each step's "
                             "int8 file")
        if self.int8_after_1bit and self.int8_max_drop is not None:
            raise ValueError("int8_after_1bit and int8_max_drop cannot be combined: NNCF's accuracy control quantizes "
                             "with the default scope")
        if self.activation_bits == 1 and self.bits != 1:
            raise ValueError("activation_bits 1 needs bits 1: a 1-bit convolution takes 1-bit weights")
        return self


class Int8Variant(BaseModel):
    """One of the two int8 files an `int8_after_1bit: "auto"` job makes of a step, as it measured it."""

    after_1bit: bool = Field(description="Whether the convs a 1-bit conv feeds are int8 in this file.")
    calibration_miss_rate: float = Field(
        description="MR^-2 of this file on the calibration (training) images: what the choice compares.")
    miss_rate: float = Field(description="MR^-2 of this file on the validation split: reported, not used to choose.")
    latency_ms: float = Field(description="Median forward time of this file, measured as `latency_ms`; breaks a tie.")
    kept: bool = Field(description="Whether this is the step's int8 file.")


class Int8Metrics(BaseModel):
    """A checkpoint's `?format=openvino-int8` file (`core.export.int8`) as its job measured it."""

    miss_rate: float = Field(description="MR^-2 of the int8 IR on the validation split.")
    ap50: float = Field(description="AP@0.5 of the int8 IR on the validation split.")
    latency_ms: float = Field(description="Median forward time of the int8 IR, measured as `latency_ms`.")
    file_bytes: int = Field(description="Size of the int8 IR zip, the file a user downloads.")
    calibration_images: int = Field(description="Training images NNCF calibrated it on.")
    max_drop: float | None = Field(
        default=None, description="The `int8_max_drop` NNCF's accuracy control made it with (on the calibration "
        "images); null: plain nncf.quantize.")
    after_1bit: bool = Field(
        default=False, description="Whether the convs a 1-bit conv feeds are int8 too (`int8_after_1bit`; with "
        "\"auto\", the variant the job kept).")
    variants: list[Int8Variant] = Field(
        default_factory=list, description="With `int8_after_1bit: \"auto\"`: both files the job made, the kept one "
        "included, as measured; empty otherwise.")


class CheckpointMetrics(BaseModel):
    """What a packed checkpoint is and how well it detects: shared by a job's step and the
    checkpoint it produced."""

    binary_layers: list[str] = Field(description="Every binarized layer of the checkpoint.")
    bits: int = Field(description="Bits per binarized weight.")
    compression_ratio: float = Field(
        description="Bytes of the float32 checkpoint / bytes of the packed one (1.0 at step 0).")
    binary_layer_compression: float | None = Field(
        description="The same ratio over the binarized layers' weights only (null when no layer is binary).")
    miss_rate: float = Field(description="Log-average miss rate MR^-2 on the validation split.")
    ap50: float = Field(description="Average precision at IoU 0.5 on the validation split.")
    fppi_curve: list[tuple[float, float]] = Field(
        default_factory=list,
        description="MR-FPPI curve on the validation split: [false positives per image, miss rate] "
                    "operating points in decreasing score order (at most 100).")
    latency_ms: float | None = Field(
        default=None, description="Median forward time of the exported OpenVINO model on the worker's CPU "
        "(1 thread, the export's fixed input size), in ms; null when it was not exported.")
    int8: Int8Metrics | None = Field(
        default=None, description="Its openvino-int8 file as measured in the job (`deploy_format` openvino-int8); "
        "null when the job did not make it.")

    def judged(self, deploy_format: DeployFormat) -> tuple[float | None, float | None]:
        """(MR^-2, forward ms) of the file `deploy_format` names, as the job measured it: the
        checkpoint as trained, or its int8 file ((None, None) where that was not made: a
        failed quantization leaves a step that no target can be met by)."""
        if deploy_format == INT8:
            return (None, None) if self.int8 is None else (self.int8.miss_rate, self.int8.latency_ms)
        return self.miss_rate, self.latency_ms


class StepMetrics(CheckpointMetrics):
    """One completed pipeline step, as JSON-able metadata."""

    index: int = Field(description="0 = the float model; step k binarized `layers` on top of step k-1.")
    layers: list[str] = Field(description="The layers this step binarized.")
    step_seconds: float = Field(description="Fine-tuning plus evaluation time of the step.")
    checkpoint_bytes: int = Field(description="Size of the step's packed checkpoint file.")
