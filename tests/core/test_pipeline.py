"""The layer-priority pipeline end to end on a few real images, with a tiny detector."""
from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import torch

from core.checkpoint import ModelCard, unpack_checkpoint
from core.data import read_pennfudan, split_records
from core.job_spec import PipelineConfig, Target
from core.paths import default_data_dir
from core.pipeline import (
    Cancelled,
    StepOutcome,
    binary_input_layers,
    plan_steps,
    run,
    select_step,
    stops_after,
)
from core.priority import discover_layers, order_layers


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    train, val = split_records(read_pennfudan(default_data_dir()))
    card = ModelCard(architecture="flexbin_pednet", width=4, input_size=64)
    return card.build().eval(), card, train[:6], val[:4]


def _config(**kw) -> PipelineConfig:
    base = {"target": Target(min_compression_ratio=6.0), "finetune_iters": 2, "batch_size": 2,
            "min_layer_params": 0}
    return PipelineConfig(**{**base, **kw})


def test_inverse_depth_run_reaches_target_and_resumes_identically(setup) -> None:
    model, card, train, val = setup
    seen: list[StepOutcome] = []
    progress = []
    result = run(model, card, train, val, _config(), on_step=seen.append, on_progress=progress.append,
                 export_openvino=False)  # the export is tested once, below
    assert [s.index for s in seen] == list(range(len(seen))) and seen == result.steps
    assert seen[0].layers == [] and seen[0].compression_ratio == 1.0
    deepest_first = [layer.name for layer in order_layers(discover_layers(model, 64), "inverse_depth")]
    assert [s.layers[0] for s in seen[1:]] == deepest_first[: len(seen) - 1]
    ratios = [s.compression_ratio for s in seen]
    assert ratios[-1] == max(ratios) >= 6.0 > ratios[-2]  # 1x1 heads may cost a few bytes
    assert result.target_met and result.selected_index == len(seen) - 1
    assert progress and progress[-1].percent == pytest.approx(100.0)
    assert all(p.eta_seconds is None or p.eta_seconds >= 0 for p in progress)
    assert [p.percent for p in progress] == sorted(p.percent for p in progress)
    # after a step's training, its evaluation and export say so (not the last iteration's message)
    measuring = [p for p in progress if p.message == "evaluating and exporting"]
    assert [p.step for p in measuring] == list(range(1, len(seen)))
    _served, served_card = unpack_checkpoint(seen[-1].checkpoint)
    assert set(served_card.binary_layers) == set(seen[-1].binary_layers)
    assert served_card.metrics["miss_rate"] == pytest.approx(seen[-1].miss_rate)

    # An interrupted run resumes after its last committed step and repeats none.
    resumed: list[StepOutcome] = []
    again = run(model, card, train, val, _config(), completed=seen[:2], on_step=resumed.append,
                export_openvino=False)
    assert [s.index for s in resumed] == list(range(2, len(seen)))
    for a, b in zip(seen, again.steps):
        assert a.checkpoint == b.checkpoint and a.miss_rate == b.miss_rate


def test_cancel_stops_within_the_step(setup) -> None:
    model, card, train, val = setup
    seen: list[StepOutcome] = []
    polls = iter(range(100))
    with pytest.raises(Cancelled):
        run(model, card, train, val, _config(finetune_iters=50), on_step=seen.append,
            should_stop=lambda: next(polls) >= 3, export_openvino=False)
    assert [s.index for s in seen] == [0]


def test_all_at_once_binarizes_the_same_layers_with_the_same_budget(setup) -> None:
    model, card, _, _ = setup
    priority = plan_steps(model, card, _config())
    baseline = plan_steps(model, card, _config(method="all_at_once"))
    needed = priority.steps[: priority.expected_steps]
    assert baseline.steps == [[name for step in needed for name in step]]
    assert baseline.iterations == [sum(priority.iterations[: priority.expected_steps])]
    with pytest.raises(ValueError, match="all_at_once needs"):
        PipelineConfig(target=Target(max_miss_rate_increase=0.1), method="all_at_once")


def test_binary_activations_run_as_1bit_kernels_and_every_step_has_its_latency(setup) -> None:
    _, _, train, val = setup
    torch.manual_seed(0)
    card = ModelCard(architecture="flexbin_pednet", width=8, input_size=64)  # 8k input channels: 1-bit capable
    model = card.build().eval()
    config = _config(activation_bits=1, target=Target(min_compression_ratio=1.5))
    steps = run(model, card, train, val, config).steps
    assert len(steps) >= 2
    for step in steps:
        assert step.latency_ms is not None and step.latency_ms > 0 and step.openvino
        binary = {n for n, p in step.layer_precision.items() if p["precision"] == "binary_weights_activations"}
        assert binary == set(step.binary_input_layers) == set(step.binary_layers)  # every layer here can
        # and OpenVINO's compiled graph runs each of them as a 1-bit convolution
        assert {n for n, p in step.layer_precision.items() if p["runs_as"] == "binary_weights_activations"} == binary
    assert steps[0].binary_input_layers == [] and steps[-1].binary_input_layers
    _, served_card = unpack_checkpoint(steps[-1].checkpoint)
    assert set(served_card.activation_quantizers) == set(steps[-1].binary_input_layers)
    # and the IR zip runs with plain OpenVINO (no torch in core.export.runtime)
    from core.export.runtime import Detector

    detections = Detector.from_zip(steps[-1].openvino).detect([torch.rand(3, 50, 64).numpy()])
    assert len(detections) == 1 and detections[0].boxes.shape[1:] == (4,)
    # a resumed run restores the thresholds and reproduces the same checkpoints
    again = run(model, card, train, val, config, completed=steps[:2], export_openvino=False).steps
    assert [s.checkpoint for s in again] == [s.checkpoint for s in steps]


def test_binary_input_layers_caps_the_binary_inputs_and_the_rest_get_1bit_weights(setup) -> None:
    """`binary_input_layers` 1: the first binarized layer takes binary inputs and runs as a 1-bit
    kernel; the later ones keep float inputs, with 1-bit weights that the IR stores 1 bit each
    (staged, the weights-only layers are binarized at once). Only with activation_bits 1."""
    _, _, train, val = setup
    torch.manual_seed(0)
    card = ModelCard(architecture="flexbin_pednet", width=8, input_size=64)
    model = card.build().eval()
    config = _config(activation_bits=1, binary_input_layers=1, staged_schedule=True, finetune_iters=2,
                     target=Target(min_compression_ratio=3.0))
    steps = run(model, card, train, val, config).steps
    last = steps[-1]
    assert len(last.binary_layers) >= 3
    first = next(s.layers for s in steps if s.layers)[0]
    assert last.binary_input_layers == [first]
    precision = {n: p["precision"] for n, p in last.layer_precision.items()}
    assert precision[first] == "binary_weights_activations"
    assert {n for n, p in precision.items() if p == "binary_weights"} == set(last.binary_layers) - {first}
    from core.export.openvino import OpenVinoExport

    model_ir = OpenVinoExport.from_zip(last.openvino).model
    u1 = sum(int(np.prod(n.get_output_shape(0))) for n in model_ir.get_ordered_ops()
             if n.get_type_name() == "Constant" and n.get_element_type() == ov.Type.u1)
    modules = dict(model.named_modules())
    assert u1 == sum(modules[name].weight.numel() for name in last.binary_layers)  # every binary weight at 1 bit
    with pytest.raises(ValueError, match="binary_input_layers needs activation_bits 1"):
        _config(binary_input_layers=2)


def test_weights_only_steps_get_weights_only_iters() -> None:
    """With `weights_only_iters`, a step whose layers all keep float inputs (past
    `binary_input_layers`) gets those iterations; a step with a binary-input layer keeps
    `finetune_iters`, also when it mixes both. Only with activation_bits 1."""
    card = ModelCard(architecture="flexbin_pednet", width=8, input_size=64)
    model = card.build().eval()
    config = _config(activation_bits=1, binary_input_layers=3, layers_per_step=2, finetune_iters=40,
                     weights_only_iters=10, target=Target(min_compression_ratio=32.0))
    plan = plan_steps(model, card, config)
    binary_inputs = binary_input_layers(plan, dict(model.named_modules()), config)
    assert len(binary_inputs) == 3 and len(plan.steps) >= 3
    assert plan.iterations == [40 if binary_inputs.intersection(step) else 10 for step in plan.steps]
    assert plan.iterations[:3] == [40, 40, 10]  # the second step mixes a binary-input and a weights-only layer
    assert plan_steps(model, card, config.model_copy(update={"weights_only_iters": None})).iterations == \
        [40] * len(plan.steps)
    with pytest.raises(ValueError, match="weights_only_iters needs activation_bits 1"):
        _config(weights_only_iters=10)


def test_iters_per_mac_percent_gives_the_costly_steps_more_iterations() -> None:
    """A step gets `iters_per_mac_percent` more iterations per percent of the network's
    multiply-accumulates its layers hold (discovery counts them: output elements x weights per
    output), on top of `finetune_iters`: the steps' extras add up to the option times the
    binarized share, and a step holding more MACs never gets fewer iterations."""
    card = ModelCard(architecture="flexbin_pednet", width=8, input_size=64)
    model = card.build().eval()
    layers = {layer.name: layer for layer in discover_layers(model, card.input_size)}
    conv = dict(model.named_modules())[next(iter(layers))]
    assert isinstance(conv, torch.nn.Conv2d)
    first = layers[next(iter(layers))]
    assert first.macs > 0 and first.macs % (conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]) == 0
    config = _config(finetune_iters=40, iters_per_mac_percent=50, target=Target(min_compression_ratio=32.0))
    plan = plan_steps(model, card, config)
    total = sum(layer.macs for layer in layers.values())
    share = [100 * sum(layers[name].macs for name in step) / total for step in plan.steps]
    assert plan.iterations == [40 + round(50 * percent) for percent in share]
    by_share = [n for _, n in sorted(zip(share, plan.iterations, strict=True))]
    assert by_share == sorted(by_share) and by_share[-1] > by_share[0]
    assert plan_steps(model, card, config.model_copy(update={"iters_per_mac_percent": None})).iterations == \
        [40] * len(plan.steps)


def test_a_staged_step_binarizes_inputs_first_then_weights(setup) -> None:
    """NNCF's staged schedule with its scale-threshold binarizer: the steps record the same layers
    as an unstaged run, the progress names both halves and never runs backwards, the checkpoints
    differ (the first half trained float weights), and a resumed run reproduces them."""
    _, _, train, val = setup
    torch.manual_seed(0)
    card = ModelCard(architecture="flexbin_pednet", width=8, input_size=64)
    model = card.build().eval()
    config = _config(activation_bits=1, activation_quantizer="scale_threshold", finetune_iters=4,
                     target=Target(min_compression_ratio=1.5))
    progress: list = []
    staged = run(model, card, train, val, config.model_copy(update={"staged_schedule": True}),
                 on_progress=progress.append, export_openvino=False).steps
    unstaged = run(model, card, train, val, config, export_openvino=False).steps
    assert [s.binary_layers for s in staged] == [s.binary_layers for s in unstaged] and len(staged) >= 2
    assert [s.binary_input_layers for s in staged] == [s.binary_input_layers for s in unstaged]
    assert staged[1].checkpoint != unstaged[1].checkpoint
    _, served_card = unpack_checkpoint(staged[-1].checkpoint)
    assert {c["name"] for c in served_card.activation_quantizers.values()} == {"scale_threshold"}
    messages = " ".join(p.message for p in progress)
    assert "with binary inputs 2/2" in messages and "with binary inputs and weights 2/2" in messages
    percents = [p.percent for p in progress]
    assert percents == sorted(percents) and percents[-1] == pytest.approx(100.0)
    again = run(model, card, train, val, config.model_copy(update={"staged_schedule": True}),
                completed=staged[:2], export_openvino=False).steps
    assert [s.checkpoint for s in again] == [s.checkpoint for s in staged]
    with pytest.raises(ValueError, match="staged_schedule needs activation_bits 1"):
        _config(staged_schedule=True)


def test_activation_bits_is_1_or_32_and_needs_1bit_weights() -> None:
    assert _config().activation_bits == 32
    with pytest.raises(ValueError, match="activation_bits must be 1 .* or 32 .*got 8"):
        _config(activation_bits=8)
    with pytest.raises(ValueError, match="needs bits 1"):
        _config(activation_bits=1, bits=2)


def test_config_bounds_seed_and_num_layers() -> None:
    assert _config(seed=2**31 - 1).seed == 2**31 - 1
    assert _config(method="all_at_once", num_layers=10_000).num_layers == 10_000
    for bad in ({"seed": -1}, {"seed": 2**31}, {"seed": 10**30},
                {"method": "all_at_once", "num_layers": 0}, {"method": "all_at_once", "num_layers": 10**9}):
        with pytest.raises(ValueError, match=next(k for k in bad if k != "method")):
            _config(**bad)


def test_targets_validate_and_select() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Target()
    with pytest.raises(ValueError, match="exactly one"):
        Target(min_compression_ratio=4.0, max_miss_rate_increase=0.1)
    with pytest.raises(ValueError):
        Target(min_compression_ratio=0.5)

    def step(i: int, ratio: float, mr: float) -> StepOutcome:
        return StepOutcome(index=i, layers=[], binary_layers=[], bits=1, compression_ratio=ratio,
                           binary_layer_compression=None, miss_rate=mr, ap50=0.0, step_seconds=0.0,
                           checkpoint_bytes=0, checkpoint=b"", state=b"")

    steps = [step(0, 1.0, 0.30), step(1, 2.0, 0.31), step(2, 5.0, 0.36), step(3, 9.0, 0.50)]
    assert select_step(steps, Target(max_miss_rate_increase=0.07)) == (2, True)
    assert select_step(steps, Target(min_compression_ratio=4.0)) == (2, True)
    assert select_step(steps, Target(min_compression_ratio=20.0)) == (3, False)


def test_patience_lets_a_miss_rate_budget_outlast_noisy_steps() -> None:
    with pytest.raises(ValueError, match="patience applies only to a max_miss_rate_increase"):
        Target(min_compression_ratio=4.0, patience=2)
    with pytest.raises(ValueError):
        Target(max_miss_rate_increase=0.05, patience=-1)

    def step(i: int, ratio: float, mr: float) -> StepOutcome:
        return StepOutcome(index=i, layers=[], binary_layers=[], bits=1, compression_ratio=ratio,
                           binary_layer_compression=None, miss_rate=mr, ap50=0.0, step_seconds=0.0,
                           checkpoint_bytes=0, checkpoint=b"", state=b"")

    # float 0.10, budget 0.05: step 2 is over it, step 3 comes back, steps 4 and 5 are over it.
    mrs = [0.10, 0.12, 0.20, 0.14, 0.30, 0.40]
    steps = [step(i, 1.0 + i, mr) for i, mr in enumerate(mrs)]
    stops = {patience: [n for n in range(2, len(steps) + 1)
                        if stops_after(steps[:n], Target(max_miss_rate_increase=0.05, patience=patience))]
             for patience in (None, 0, 1, 2)}
    assert stops[None] == stops[0] == [3, 5, 6]  # after step 2, at the first step over budget
    assert stops[1] == [6]  # two in a row: steps 4 and 5
    assert stops[2] == []
    # whatever the run went through, the selection is the most compressed step inside the budget
    assert select_step(steps, Target(max_miss_rate_increase=0.05, patience=1)) == (3, True)
    assert Target(max_miss_rate_increase=0.05, patience=1).public() == {"max_miss_rate_increase": 0.05, "patience": 1}


def test_small_layers_stay_float(setup) -> None:
    model, card, _, _ = setup
    plan = plan_steps(model, card, _config(min_layer_params=1000))
    sizes = {layer.name: layer.num_params for layer in discover_layers(model, 64)}
    planned = [name for step in plan.steps for name in step]
    assert planned and all(sizes[name] >= 1000 for name in planned)
    assert set(planned) == {name for name, n in sizes.items() if n >= 1000}
    with pytest.raises(ValueError, match="no binarizable"):
        plan_steps(model, card, _config(min_layer_params=10**9))


def test_sensitivity_order_is_measured_and_deterministic(setup) -> None:
    model, card, train, val = setup
    config = _config(order="sensitivity", target=Target(min_compression_ratio=1.5))
    a = run(model, card, train, val, config, export_openvino=False)
    b = run(model, card, train, val, config, export_openvino=False)
    assert [s.layers for s in a.steps] == [s.layers for s in b.steps]
    assert len(a.steps) >= 2


def test_eta_is_measured_from_the_first_report_not_from_the_set_up(monkeypatch) -> None:
    """A job that spends minutes before its first iteration (the float evaluation, a `latency`
    job's layer timing) must not extrapolate that wait over every iteration left."""
    from core.pipeline import IterationReport, _Plan, _ProgressTracker

    clock = [0.0]
    monkeypatch.setattr("core.pipeline.time.monotonic", lambda: clock[0])
    reports: list = []
    plan = _Plan(steps=[["a"], ["b"]], iterations=[100, 100], expected_steps=2)
    tracker = _ProgressTracker(plan, PipelineConfig(target=Target(min_compression_ratio=2.0)), reports.append, 0)
    clock[0] = 600.0  # ten minutes of set-up
    tracker.step_done(0)
    assert reports[-1].eta_seconds is None  # nothing measured yet
    clock[0] = 610.0  # then 10 iterations a second
    tracker.iteration(1, IterationReport(iteration=100, total=100, seconds=10.0))
    left = tracker.total - tracker.done - 100
    assert reports[-1].eta_seconds == pytest.approx(left / 10, rel=0.01)
