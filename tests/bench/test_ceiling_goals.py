"""bench.ceiling's judgement of trained checkpoints (issue 19's goal) and its 1-bit MAC share."""
from __future__ import annotations

import pytest

from bench.ceiling import auto_picks, checkpoint_goals, one_bit_mac_share, setting_key
from core.export.one_bit import binarize_all, float_model


def test_a_checkpoint_meets_the_goal_only_when_every_check_passes() -> None:
    key = setting_key(1, "f32")
    times = {"nncf_int8": {key: 3.0}, "intel_fp16_int8": {key: 3.1}, "checkpoint1": {key: 2.5},
             "checkpoint1_int8": {key: 3.05}}
    rows = {"float": {"miss_rate": 0.12}, "nncf_int8": {"ir_bytes": 2_000_000},
            "checkpoint1": {"miss_rate": 0.15, "ir_bytes": 900_000, "one_bit_mac_share": 0.6},
            "checkpoint1_int8": {"miss_rate": 0.149, "ir_bytes": 900_000, "one_bit_mac_share": 0.6}}
    goals = {g["row"]: g for g in checkpoint_goals(rows, times)}
    assert goals["checkpoint1"]["met"]
    assert not goals["checkpoint1_int8"]["met"]  # slower than NNCF int8
    assert goals["checkpoint1_int8"]["checks"] == {
        "faster than NNCF int8": False, "faster than Intel FP16-INT8": True, "MR^-2 within float + 0.03": True,
        "IR at most half NNCF int8's": True, ">= 50 % of conv MACs 1-bit": True}
    rows["checkpoint1"]["miss_rate"] = 0.151  # just over float + 0.03
    assert not checkpoint_goals(rows, times)[0]["met"]


def test_auto_keeps_the_int8_file_better_on_the_calibration_images_and_reports_whether_validation_agrees() -> None:
    key = setting_key(1, "f32")
    times = {"checkpoint1": {key: 3.3}, "checkpoint1_int8": {key: 3.0}, "checkpoint1_int8_fusing": {key: 3.2}}
    rows = {"checkpoint1": {"miss_rate": 0.17},
            "checkpoint1_int8": {"miss_rate": 0.13, "calibration_miss_rate": 0.05},
            "checkpoint1_int8_fusing": {"miss_rate": 0.21, "calibration_miss_rate": 0.04}}
    (pick,) = auto_picks(rows, times)
    assert pick["kept"] == "checkpoint1_int8_fusing" and pick["better_on_validation"] == "checkpoint1_int8"
    assert not pick["agree"]
    rows["checkpoint1_int8_fusing"]["calibration_miss_rate"] = 0.05  # a tie: the faster file
    assert auto_picks(rows, times)[0]["kept"] == "checkpoint1_int8" and auto_picks(rows, times)[0]["agree"]


def test_the_dense_convs_hold_most_of_pedestrian_adas_0002s_macs() -> None:
    model, _ = float_model()
    assert one_bit_mac_share(model, set()) == 0.0
    share = one_bit_mac_share(model, set(binarize_all(model)))
    assert 0.85 < share < 0.95  # 41 dense convs; the depthwise ones and conv1 hold the rest


def test_each_rows_miss_rate_comes_with_a_bootstrap_interval_over_images() -> None:
    import numpy as np
    import torch

    from bench.ceiling import miss_rate, miss_rate_sample
    from core.export.runtime import Detections

    truth = [torch.tensor([[10.0, 10.0, 50.0, 90.0]]), torch.tensor([[5.0, 5.0, 40.0, 80.0], [60, 5, 90, 80]])] * 5

    def detections(hit_second: bool) -> list:
        out = []
        for t in truth:
            boxes = t[:1] if not hit_second else t
            out.append(Detections(boxes=boxes.numpy().astype(np.float32),
                                  scores=np.linspace(0.9, 0.8, len(boxes), dtype=np.float32)))
        return out

    sample = miss_rate_sample(detections(False), truth)
    assert sample.estimate == miss_rate(detections(False), truth).miss_rate > 0  # a pedestrian is missed
    ci = sample.interval()
    assert ci.lo <= ci.estimate <= ci.hi and ci.hi > ci.lo  # images drawn with replacement move it
    perfect = miss_rate_sample(detections(True), truth)
    assert perfect.estimate == perfect.interval().hi == pytest.approx(0.0, abs=1e-9)  # the log floor


def test_the_layer_table_counts_where_1bit_beats_int8() -> None:
    from bench.ceiling import per_layer_lines

    per_layer = {"float": {"a": 0.40, "b": 0.10}, "nncf_int8": {"a": 0.10, "b": 0.03},
                 "all_1bit": {"a": 0.25, "b": 0.01}}
    text = "\n".join(per_layer_lines(per_layer))
    assert "faster than int8 on 1 of 2 layers, by 0.020 ms together, and slower on 1, by 0.150 ms" in text
    assert "| **sum** | 0.500 | 0.130 | 0.260 | -0.130 |" in text
    assert per_layer_lines({"float": {"a": 1.0}}) == []  # a run without the int8 or 1-bit row has no table
