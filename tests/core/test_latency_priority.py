"""Priority by what it buys (issue 19): layers timed on this CPU as float and as 1-bit, the
`latency` order built from that table, and targets that speak speed."""
from __future__ import annotations

import io
import zipfile

import pytest
import torch
from pydantic import ValidationError

from core.checkpoint import ModelCard
from core.data import read_pennfudan, split_records
from core.export.int8 import is_int8, runtime_precisions
from core.export.one_bit import layer_savings
from core.export.openvino import OpenVinoExport
from core.job_spec import Int8Metrics, PipelineConfig, Target
from core.paths import default_data_dir
from core.pipeline import (
    Cancelled,
    StepOutcome,
    eligible_layers,
    plan_steps,
    run,
    select_step,
    stops_after,
)
from core.priority import LayerInfo, order_layers

CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 8}


def _layers() -> list[LayerInfo]:
    return [LayerInfo(name, "Conv2d", depth, (8, 8, 3, 3)) for depth, name in enumerate("abcde")]


def test_the_latency_order_is_deterministic_for_a_timing_table() -> None:
    savings = {"a": 0.2, "b": 1.5, "c": 0.2, "d": -0.1, "e": 0.9}
    order = [layer.name for layer in order_layers(_layers(), "latency", savings=savings)]
    # most time saved first; a tie (a, c) and the layers that save nothing (d: slower at 1 bit) go deepest first
    assert order == ["b", "e", "c", "a", "d"]
    assert order == [layer.name for layer in order_layers(list(reversed(_layers())), "latency", savings=savings)]
    with pytest.raises(ValueError, match="needs the measured time"):
        order_layers(_layers(), "latency")


def test_latency_targets_validate_like_the_others() -> None:
    assert Target(max_latency_ms=5.0).speaks_latency and Target(min_speedup=1.5).speaks_latency
    assert not Target(min_compression_ratio=8).speaks_latency
    for bad in ({"max_latency_ms": 0}, {"max_latency_ms": -3}, {"min_speedup": 1.0}, {"min_speedup": 1000},
                {"max_latency_ms": 5, "min_speedup": 2}, {"max_latency_ms": 5, "min_compression_ratio": 8}, {}):
        with pytest.raises(ValidationError):
            Target.model_validate(bad)
    with pytest.raises(ValidationError, match="order latency needs activation_bits 1"):
        PipelineConfig(target=Target(min_speedup=1.5), order="latency")
    assert PipelineConfig(target=Target(min_speedup=1.5), order="latency", activation_bits=1).order == "latency"


def _step(index: int, latency: float | None, ratio: float) -> StepOutcome:
    return StepOutcome(index=index, layers=[], binary_layers=[], bits=1, compression_ratio=ratio,
                       binary_layer_compression=None, miss_rate=0.2, ap50=0.8, step_seconds=1.0, checkpoint_bytes=1,
                       checkpoint=b"", state=b"", latency_ms=latency)


def test_a_latency_target_selects_the_first_step_that_meets_it_on_measured_latency() -> None:
    steps = [_step(0, 10.0, 1.0), _step(1, 8.0, 1.2), _step(2, None, 1.5), _step(3, 4.9, 2.0), _step(4, 3.0, 3.0)]
    assert select_step(steps, Target(max_latency_ms=5.0)) == (3, True)
    assert select_step(steps, Target(min_speedup=2.0)) == (3, True)  # 10 / 4.9 >= 2
    assert select_step(steps, Target(min_speedup=1.25)) == (1, True)
    assert select_step(steps, Target(max_latency_ms=1.0)) == (4, False)  # not met: the fastest measured step


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    card = ModelCard.model_validate(CARD)
    train, val = split_records(read_pennfudan(default_data_dir()))
    return card.build().eval(), card, train[:4], val[:3]


def test_layer_savings_time_each_layer_as_float_and_as_1bit(tiny) -> None:
    model, card, _, _ = tiny
    names = ["features.0.0", "features.5.0", "features.6.0", "heatmap"]
    savings = layer_savings(model, card, names, runs=3, repeats=2, resolution_ms=0.005)
    assert set(savings) == set(names)
    assert savings["features.0.0"] == 0.0  # 3 input channels: cannot take binary inputs, saves nothing
    assert all(isinstance(v, float) for v in savings.values())
    # rounded to the resolution, so that timing noise alone does not reorder the layers
    assert all(abs(v / 0.005 - round(v / 0.005)) < 1e-6 for v in savings.values())


def test_a_latency_job_orders_by_measured_savings_keeps_its_prefix_on_resume_and_stops_on_speed(tiny) -> None:
    model, card, train, val = tiny
    config = PipelineConfig(target=Target(min_speedup=50.0), order="latency", activation_bits=1, finetune_iters=1,
                            batch_size=2, min_layer_params=0, layers_per_step=6)
    with pytest.raises(ValueError, match="needs the per-step OpenVINO export"):
        run(model, card, train, val, config, export_openvino=False)
    seen: list[StepOutcome] = []
    result = run(model, card, train, val, config, on_step=seen.append)
    assert all(s.latency_ms is not None for s in seen)
    assert not result.target_met  # 50x faster is out of reach: the fastest measured step is selected
    assert result.selected_index == min(seen, key=lambda s: s.latency_ms or 0).index
    # a resumed run keeps the layers already committed where they are, whatever the new timings say
    done = [s.layers for s in seen[1:2]]
    plan = plan_steps(model, card, config, savings={n.name: 0.0 for n in eligible_layers(model, card, config)},
                      done=done)
    assert plan.steps[0] == done[0]


def _int8_step(index: int, trained: tuple[float, float], int8: tuple[float, float] | None, ratio: float) -> StepOutcome:
    figures = None if int8 is None else Int8Metrics(miss_rate=int8[0], ap50=0.8, latency_ms=int8[1], file_bytes=1,
                                                    calibration_images=1)
    return _step(index, trained[1], ratio).model_copy(update={"miss_rate": trained[0], "int8": figures})


def test_deploy_format_int8_judges_targets_on_each_steps_int8_file_against_the_float_model_as_trained() -> None:
    # (MR, ms) as trained and as int8: int8 is faster, and its MR moves either way
    steps = [_int8_step(0, (0.10, 10.0), (0.11, 4.0), 1.0), _int8_step(1, (0.12, 8.0), (0.16, 3.0), 2.0),
             _int8_step(2, (0.20, 6.0), None, 3.0), _int8_step(3, (0.15, 7.0), (0.12, 2.5), 4.0)]
    int8 = "openvino-int8"
    assert select_step(steps, Target(max_latency_ms=3.5)) == (2, False)  # as trained: none; the fastest, 6 ms
    assert select_step(steps, Target(max_latency_ms=3.5), int8) == (1, True)
    assert select_step(steps, Target(min_speedup=3.5), int8) == (3, True)  # against float as trained: 10 / 2.5
    # a miss-rate budget over the float model as trained (0.10); a step without an int8 file is over it
    assert select_step(steps, Target(max_miss_rate_increase=0.03)) == (1, True)
    assert select_step(steps, Target(max_miss_rate_increase=0.03), int8) == (3, True)
    assert stops_after(steps[:3], Target(max_miss_rate_increase=0.05, patience=1), int8)  # 0.16, then none
    assert not stops_after(steps[:3], Target(max_miss_rate_increase=0.05, patience=1))  # 0.12, 0.20
    assert select_step(steps[:1], Target(max_miss_rate_increase=0.005), int8) == (0, False)  # float's int8: 0.11


def test_a_deploy_format_int8_job_makes_measures_and_stores_each_steps_int8_file(tiny) -> None:
    model, card, train, val = tiny
    config = PipelineConfig(target=Target(max_miss_rate_increase=1.0), activation_bits=1, finetune_iters=1,
                            batch_size=2, min_layer_params=0, layers_per_step=3, deploy_format="openvino-int8")
    with pytest.raises(ValueError, match="needs the per-step OpenVINO export"):
        run(model, card, train, val, config, export_openvino=False)
    seen: list[StepOutcome] = []
    result = run(model, card, train[:3], val, config, on_step=seen.append, int8_calibration_images=2)
    assert len(seen) >= 2 and all(s.int8 is not None and s.openvino_int8 for s in seen)
    for step in seen[:2]:
        assert step.int8.calibration_images == 2 and step.int8.file_bytes == len(step.openvino_int8)
        assert 0.0 <= step.int8.miss_rate <= 1.0 and step.int8.latency_ms > 0
        found = runtime_precisions(OpenVinoExport.from_zip(step.openvino_int8).detector().compiled(
            card_input_shape(step)))
        assert any(is_int8(precision) for (_, precision) in found)  # the float convs run int8
        if step.index:  # the binary-input layers stay 1-bit
            assert found[("BinaryConvolution", "u1")] >= 1
    assert result.selected_index == select_step(seen, config.target, "openvino-int8")[0]
    assert "int8" in seen[1].model_dump(mode="json") and "openvino_int8" not in seen[1].model_dump(mode="json")


def card_input_shape(step: StepOutcome) -> list[int]:
    return OpenVinoExport.from_zip(step.openvino_int8).spec["input"]["shape"]


def test_int8_max_drop_makes_the_int8_file_under_nncfs_accuracy_control_on_the_calibration_images(tiny) -> None:
    with pytest.raises(ValidationError, match="int8_max_drop needs deploy_format openvino-int8"):
        PipelineConfig(target=Target(min_compression_ratio=2.0), int8_max_drop=0.01)
    model, card, train, val = tiny
    config = PipelineConfig(target=Target(min_compression_ratio=32.0), activation_bits=1, finetune_iters=1,
                            batch_size=2, min_layer_params=0, layers_per_step=6, deploy_format="openvino-int8",
                            int8_max_drop=0.0)
    seen: list[StepOutcome] = []
    with pytest.raises(Cancelled):  # after step 1
        run(model, card, train[:3], val, config, on_step=seen.append, int8_calibration_images=3,
            should_stop=lambda: len(seen) > 1)
    assert all(s.int8 is not None and s.int8.max_drop == 0.0 for s in seen)
    quantization = OpenVinoExport.from_zip(seen[-1].openvino_int8).spec["quantization"]
    assert quantization["method"] == "nncf.quantize_with_accuracy_control"
    assert quantization["max_drop"] == 0.0 and quantization["validation_images"] == 3


def test_int8_after_1bit_makes_the_int8_file_with_the_convs_a_1bit_conv_feeds_in_int8_too(tiny) -> None:
    for wrong, match in (({}, "int8_after_1bit needs deploy_format openvino-int8"),
                         ({"deploy_format": "openvino-int8", "int8_max_drop": 0.01}, "cannot be combined")):
        with pytest.raises(ValidationError, match=match):
            PipelineConfig(target=Target(min_compression_ratio=2.0), int8_after_1bit=True, **wrong)
    model, card, train, val = tiny
    for after in (False, True):  # which convs it makes int8: test_ceiling_export, on the detector that has them
        config = PipelineConfig(target=Target(min_compression_ratio=32.0), activation_bits=1, finetune_iters=1,
                                batch_size=2, min_layer_params=0, layers_per_step=6, deploy_format="openvino-int8",
                                int8_after_1bit=after)
        seen: list[StepOutcome] = []
        with pytest.raises(Cancelled):  # after step 1
            run(model, card, train[:3], val, config, on_step=seen.append, int8_calibration_images=2,
                should_stop=lambda seen=seen: len(seen) > 1)
        assert seen[-1].int8 is not None and seen[-1].int8.after_1bit is after
        export = OpenVinoExport.from_zip(seen[-1].openvino_int8)
        assert export.spec["quantization"]["int8_after_1bit"] is after
        readme = zipfile.ZipFile(io.BytesIO(seen[-1].openvino_int8)).read("README.txt").decode()
        assert ("except the convs a 1-bit conv feeds" in readme) is not after
        found = runtime_precisions(export.detector().compiled(card_input_shape(seen[-1])))
        assert found[("BinaryConvolution", "u1")] >= 1


def test_int8_after_1bit_auto_makes_both_files_and_keeps_the_better_on_the_calibration_images(tiny) -> None:
    with pytest.raises(ValidationError, match="int8_after_1bit needs deploy_format openvino-int8"):
        PipelineConfig(target=Target(min_compression_ratio=2.0), int8_after_1bit="auto")
    with pytest.raises(ValidationError, match="int8_after_1bit"):
        PipelineConfig(target=Target(min_compression_ratio=2.0), deploy_format="openvino-int8",
                       int8_after_1bit="sometimes")
    model, card, train, val = tiny
    config = PipelineConfig(target=Target(min_compression_ratio=32.0), activation_bits=1, finetune_iters=1,
                            batch_size=2, min_layer_params=0, layers_per_step=6, deploy_format="openvino-int8",
                            int8_after_1bit="auto")
    seen: list[StepOutcome] = []
    with pytest.raises(Cancelled):  # after step 1
        run(model, card, train[:3], val, config, on_step=seen.append, int8_calibration_images=2,
            should_stop=lambda: len(seen) > 1)
    int8 = seen[-1].int8
    assert int8 is not None and sorted(v.after_1bit for v in int8.variants) == [False, True]
    (kept,) = [v for v in int8.variants if v.kept]
    other = next(v for v in int8.variants if not v.kept)
    assert (kept.calibration_miss_rate, kept.latency_ms) <= (other.calibration_miss_rate, other.latency_ms)
    assert int8.after_1bit is kept.after_1bit and int8.miss_rate == kept.miss_rate
    export = OpenVinoExport.from_zip(seen[-1].openvino_int8)  # the stored file is the kept one
    assert export.spec["quantization"]["int8_after_1bit"] is kept.after_1bit
