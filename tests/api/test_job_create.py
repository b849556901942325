"""POST /jobs (api.schemas.JobCreate) can set everything a pipeline run takes."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.schemas import JobCreate
from core.job_spec import PipelineConfig


def test_every_pipeline_option_can_be_set_through_post_jobs() -> None:
    assert set(PipelineConfig.model_fields) <= set(JobCreate.model_fields)
    body = JobCreate(model_id="m", dataset_id="d", target={"min_compression_ratio": 8.0}, layers_per_step=4,
                     binarize_depthwise=True)
    config = PipelineConfig.model_validate(
        body.model_dump(exclude={"model_id", "dataset_id", "deploy_on_success"}, exclude_none=True))
    assert config.layers_per_step == 4 and config.binarize_depthwise
    defaults = JobCreate(model_id="m", dataset_id="d", target={"min_compression_ratio": 8.0})
    config = PipelineConfig.model_validate(
        defaults.model_dump(exclude={"model_id", "dataset_id", "deploy_on_success"}, exclude_none=True))
    assert config.layers_per_step == 1 and not config.binarize_depthwise


def test_binary_input_layers_is_a_job_option_that_needs_binary_inputs() -> None:
    body = JobCreate(model_id="m", dataset_id="d", target={"min_compression_ratio": 8.0}, activation_bits=1,
                     binary_input_layers=24)
    assert body.pipeline_config().binary_input_layers == 24
    with pytest.raises(ValidationError, match="binary_input_layers needs activation_bits 1"):
        JobCreate(model_id="m", dataset_id="d", target={"min_compression_ratio": 8.0}, binary_input_layers=24)
    with pytest.raises(ValidationError, match="binary_input_layers"):
        JobCreate(model_id="m", dataset_id="d", target={"min_compression_ratio": 8.0}, activation_bits=1,
                  binary_input_layers=-1)


def test_weights_only_iters_is_a_job_option_that_needs_binary_inputs() -> None:
    body = JobCreate(model_id="m", dataset_id="d", target={"min_compression_ratio": 8.0}, activation_bits=1,
                     binary_input_layers=24, weights_only_iters=200)
    assert body.pipeline_config().weights_only_iters == 200
    with pytest.raises(ValidationError, match="weights_only_iters needs activation_bits 1"):
        JobCreate(model_id="m", dataset_id="d", target={"min_compression_ratio": 8.0}, weights_only_iters=200)
