"""bench.ceiling's judgement of trained checkpoints (issue 19's goal) and its 1-bit MAC share."""
from __future__ import annotations

from bench.ceiling import checkpoint_goals, one_bit_mac_share, setting_key
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


def test_the_dense_convs_hold_most_of_pedestrian_adas_0002s_macs() -> None:
    model, _ = float_model()
    assert one_bit_mac_share(model, set()) == 0.0
    share = one_bit_mac_share(model, set(binarize_all(model)))
    assert 0.85 < share < 0.95  # 41 dense convs; the depthwise ones and conv1 hold the rest
