"""bench.speed's judgement of issue 19's int8 comparison, and its reading of older result files."""
from __future__ import annotations

import argparse

from bench.speed import _int8_goal, binary_recipe, int8_baseline, variants_of
from core.job_spec import PipelineConfig, Target


def _row(ms: float, miss_rate: float, ir_bytes: int, share: float) -> dict:
    return {"forward_ms_1t": ms, "miss_rate": miss_rate, "ir_bytes": ir_bytes, "one_bit_mac_share": share}


def test_the_int8_goal_is_met_only_by_a_variant_that_passes_every_check() -> None:
    rows = {"ov_float": _row(5.0, 0.20, 4_000_000, 0.0), "ov_nncf_int8": _row(1.0, 0.21, 1_200_000, 0.0),
            "ov_binary_activations": _row(0.9, 0.22, 500_000, 0.4),  # too few MACs at 1 bit
            "ov_binary_activations_int8": _row(1.1, 0.22, 500_000, 0.6),  # slower than int8
            "ov_binary_activations_all": _row(0.8, 0.24, 500_000, 0.9)}  # over float + 0.03
    goal = _int8_goal(rows)
    assert not goal["met"]
    assert "ov_binary_activations fails: >= 50 % of conv MACs 1-bit" in goal["why"]
    assert "ov_binary_activations_int8 fails: faster than NNCF int8" in goal["why"]
    assert "ov_binary_activations_all fails: MR^-2 within float + 0.03" in goal["why"]
    rows["ov_binary_activations_all"]["miss_rate"] = 0.23
    assert _int8_goal(rows)["met"]


def test_result_files_from_before_nncf_int8_still_render_their_variants() -> None:
    old = {"variants": {name: {} for name in ("torch_float", "ov_float", "ov_binary_weights", "ov_int8",
                                              "ov_binary_activations", "ov_binary_activations_all")}}
    assert variants_of(old) == list(old["variants"])
    assert int8_baseline(old) == "ov_int8"
    new = {"variants": {name: {} for name in ("ov_binary_activations_all", "ov_nncf_int8", "ov_float", "torch_float")}}
    assert variants_of(new) == ["torch_float", "ov_float", "ov_nncf_int8", "ov_binary_activations_all"]
    assert int8_baseline(new) == "ov_nncf_int8"


def test_the_recipe_options_reach_only_the_binary_activation_job() -> None:
    unset = {"binarizer_lr": None, "binary_input_layers": None, "min_speedup": None, "min_compression_ratio": None}
    args = argparse.Namespace(**{**unset, "order": "latency", "activation_quantizer": "scale_threshold", "staged": True})
    assert binary_recipe(args, 32) == {}
    recipe = binary_recipe(args, 1)
    assert recipe == {"order": "latency", "activation_quantizer": "scale_threshold", "staged_schedule": True}
    config = PipelineConfig(target=Target(max_miss_rate_increase=0.05), activation_bits=1, **recipe)
    assert (config.order, config.staged_schedule) == ("latency", True)
    defaults = argparse.Namespace(**{**unset, "order": None, "activation_quantizer": None, "staged": False})
    assert binary_recipe(defaults, 1) == {}
    # a target of its own, and binary inputs on the first layers only
    capped = argparse.Namespace(**{**vars(args), "binary_input_layers": 6, "min_compression_ratio": 32.0})
    assert binary_recipe(capped, 1) == {**recipe, "binary_input_layers": 6, "target": {"min_compression_ratio": 32.0}}
    assert binary_recipe(capped, 32) == {}
