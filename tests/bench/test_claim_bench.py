"""`bench.claim` end to end on a tiny design: every run, the report, and a resume that
redoes nothing. The study's worker processes (spawned) import the run functions from
`bench.claim` by name, as `python -m bench.claim` does."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import claim
from bench.study.arms import ARMS, StudyDesign
from core.checkpoint import load_model
from core.paths import REPO_ROOT, default_data_dir


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    """12 Penn-Fudan images, linked (never copied) into a dataset folder."""
    source = default_data_dir()
    for folder in ("PNGImages", "Annotation"):
        (tmp_path / folder).mkdir()
    for png in sorted((source / "PNGImages").glob("*.png"))[:12]:
        (tmp_path / "PNGImages" / png.name).symlink_to(png)
        note = source / "Annotation" / f"{png.stem}.txt"
        (tmp_path / "Annotation" / note.name).symlink_to(note)
    return tmp_path


def test_tiny_study_runs_reports_and_resumes_without_redoing_runs(small_data: Path, tmp_path: Path) -> None:
    design = StudyDesign(builder_kwargs={"width": 4, "input_size": 64}, folds=2, evaluated_folds=(0,), seeds=1,
                         float_iterations=2, finetune_iters=1, consolidation_iters=1, batch_size=2,
                         learning_rates=(1e-3,), drift_images=2, min_layer_params=100)
    kwargs = {"name": "claim_tiny", "variant": "tiny", "data": small_data, "out": tmp_path / "out",
              "work_root": tmp_path / "work", "workers": 1, "threads": 1, "pretrained": None, "quick": True}
    report = claim.run_study(design, **kwargs)
    saved = json.loads((tmp_path / "out" / "claim_tiny.json").read_text())
    assert saved["analysis"]["comparisons"] == report["analysis"]["comparisons"]
    primary = next(c for c in saved["analysis"]["comparisons"] if c["role"] == "primary")
    assert primary["verdict"] in ("better", "worse", "equivalent", "inconclusive")
    assert saved["analysis"]["units"]["evaluations_per_checkpoint"] == 6  # fold 0's 6 images x 1 seed
    assert {r["arm"] for r in saved["analysis"]["runs"]} == set(ARMS)
    for suffix in (".md", "_forest.png", "_curves.png"):
        assert (tmp_path / "out" / f"claim_tiny{suffix}").stat().st_size > 0
    runs = sorted((tmp_path / "work").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in runs}

    again = claim.run_study(design, **kwargs)  # resumes: every run is on disk
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps
    assert again["analysis"]["comparisons"] == report["analysis"]["comparisons"]
    assert not again["fresh_start"]


def test_a_given_detector_runs_at_the_designs_input_size() -> None:
    """--input overrides the given model's card (pedestrian_adas_0002 at 192x336 for the
    reduced study): the same weights, the smaller network input, in the design's hash."""
    args = argparse.Namespace(model="pedestrian_adas_0002", pretrained=Path("x"), activation_bits=None,
                                    quick=False, seeds=1, finetune_iters=5, consolidation_iters=20,
                                    evaluated_folds=claim._numbers(int)("0,1"),
                                    learning_rates=claim._numbers(float)("1e-4,3e-4"), input=claim._size("192x336"))
    design = claim.build_design(args)
    assert design.builder_kwargs == {"input_height": 192, "input_width": 336}
    assert design.evaluated_folds == (0, 1) and design.learning_rates == (1e-4, 3e-4)
    model, card = load_model(REPO_ROOT / "core/models/weights/pedestrian_adas_0002",
                                   overrides=design.builder_kwargs)
    assert (model.input_height, model.input_width) == (192, 336)
    assert card.model_dump()["input_height"] == 192


def test_a_named_results_file_says_how_to_rerun_it() -> None:
    """--name keeps a second design of a variant beside the first; the README's command line
    names the file only where it is not the variant's default."""
    design = StudyDesign(architecture="pedestrian_adas_0002", pretrained=True,
                         builder_kwargs={"input_height": 192, "input_width": 336},
                         learning_rates=(1e-4, 3e-4)).model_dump(mode="json")
    variant = claim.variant_of(design)
    assert (variant, claim.default_name(variant)) == ("pedestrian_adas_0002_192x336",
                                                      "claim_pedestrian_adas_0002_192x336")
    result = {"design": design, "quick": False}
    assert "--name" not in claim._command(result, "claim_pedestrian_adas_0002_192x336")
    assert claim._command(result, "claim_pedestrian_adas_0002_192x336_2seeds").endswith(
        "--learning-rates 1e-4,3e-4 --name claim_pedestrian_adas_0002_192x336_2seeds")
