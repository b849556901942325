"""The demo's settings and recipe (service/demo.py): which detector, which job."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.data import read_pennfudan, split_records
from core.paths import default_data_dir
from core.pipeline import plan_steps
from service.demo import (
    ADAS_DEMO,
    DEMO_MODEL_NAMES,
    demo_float_model,
    demo_pipeline_config,
)
from service.settings import Settings


def test_demo_model_setting(monkeypatch) -> None:
    monkeypatch.delenv("FLEXBIN_DEMO_MODEL", raising=False)
    assert Settings().demo_model == "pedestrian_adas_0002"
    monkeypatch.setenv("FLEXBIN_DEMO_MODEL", "pednet")
    assert Settings().demo_model == "pednet"
    monkeypatch.setenv("FLEXBIN_DEMO_MODEL", "yolo")
    with pytest.raises(ValidationError, match="demo_model"):
        Settings()
    assert set(DEMO_MODEL_NAMES) == {"pedestrian_adas_0002", "pednet"}
    assert len(set(DEMO_MODEL_NAMES.values())) == 2


def test_pednet_demo_job_is_unchanged() -> None:
    config = demo_pipeline_config(Settings(demo_model="pednet"))
    assert config.layers_per_step == 1 and config.learning_rate == 1e-3
    assert config.finetune_iters == 60 and config.target.min_compression_ratio == 8.0


def test_pretrained_demo_reaches_its_target_in_the_planned_steps() -> None:
    """The README's time estimate for the default demo assumes this plan: 8x after 37 of the 41
    dense layers, one per step, so 37 steps of 60 iterations at 192x336."""
    settings = Settings(demo_model="pedestrian_adas_0002")
    config = demo_pipeline_config(settings)
    assert (config.layers_per_step, config.learning_rate) == (ADAS_DEMO.layers_per_step, ADAS_DEMO.learning_rate)
    assert config.method == "layer_priority" and config.order == "inverse_depth" and config.bits == 1
    _, val = split_records(read_pennfudan(default_data_dir()))
    model, card = demo_float_model(settings, [], val[:3])
    assert (model.input_height, model.input_width) == (192, 336)
    assert card.architecture == "pedestrian_adas_0002" and card.builder_kwargs["input_height"] == 192
    assert 0.0 <= card.metrics["miss_rate"] <= 1.0 and card.provenance["license"] == "Apache-2.0"
    plan = plan_steps(model, card, config)
    assert plan.expected_steps == 37 and len(plan.steps) == 41
    assert sum(plan.iterations[: plan.expected_steps]) == 37 * 60
