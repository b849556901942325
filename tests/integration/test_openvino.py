"""OpenVINO end to end: a job with binary activations, its per-step latency and layer precision
in the API, the `?format=openvino` download (a zip plain OpenVINO compiles and runs), and
/detect served by the OpenVINO backend."""
from __future__ import annotations

import io
import json
import sys
import zipfile

import httpx
import numpy as np
import pytest

from core.paths import default_data_dir
from testkit.factories import run_tiny_job, upload_tiny
from testkit.fixtures import EXPORT_ON
from testkit.stack import KEYS

WORKER_ENV = EXPORT_ON  # checkpoints with an OpenVINO IR: /detect serves them on OpenVINO


@pytest.fixture(scope="module")
def binary_job(api_url: str, worker) -> dict:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=120) as c:
        return run_tiny_job(c, {"target": {"min_compression_ratio": 1.5}, "finetune_iters": 2, "batch_size": 2,
                                "activation_bits": 1, "min_layer_params": 0, "seed": 3})


def test_steps_and_checkpoints_carry_latency_and_layer_precision(client: httpx.Client, binary_job: dict) -> None:
    steps = binary_job["steps"]
    assert binary_job["config"]["activation_bits"] == 1
    assert all(s["latency_ms"] is not None and s["latency_ms"] > 0 for s in steps)
    last = client.get(f"/checkpoints/{steps[-1]['checkpoint_id']}").json()
    assert last["latency_ms"] == pytest.approx(steps[-1]["latency_ms"])
    assert last["serving_backend"] == "openvino" and last["openvino"] is True
    binary = {n for n, p in last["layer_precision"].items() if p["precision"] == "binary_weights_activations"}
    assert binary and binary <= set(last["binary_layers"])
    # every layer the checkpoint holds as 1-bit weights + activations runs as a 1-bit convolution
    assert all(last["layer_precision"][n]["runs_as"] == "binary_weights_activations" for n in binary)
    heatmap = client.get(f"/checkpoints/{steps[0]['checkpoint_id']}").json()["layer_precision"]["heatmap"]
    assert heatmap["precision"] == heatmap["runs_as"] == "float" and heatmap["ms"] > 0  # its measured time too


def test_the_openvino_download_runs_with_plain_openvino(client: httpx.Client, binary_job: dict,
                                                        other_client: httpx.Client) -> None:
    import openvino as ov

    checkpoint_id = binary_job["selected_checkpoint_id"]
    r = client.get(f"/checkpoints/{checkpoint_id}/download", params={"format": "openvino"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "openvino.zip" in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert {"model.xml", "model.bin", "card.json", "README.txt", "flexbin_detect.py"} <= set(zf.namelist())
        xml, weights, card = zf.read("model.xml"), zf.read("model.bin"), json.loads(zf.read("card.json"))
    core = ov.Core()
    model = core.read_model(model=xml, weights=weights)
    compiled = core.compile_model(model, "CPU")
    shape = card["export"]["input"]["shape"]
    outputs = compiled(np.zeros(shape, dtype=np.float32))
    assert {o.get_any_name() for o in outputs} == set(card["export"]["outputs"])
    # the default download is still the packed safetensors checkpoint
    assert client.get(f"/checkpoints/{checkpoint_id}/download").content[:8] != b"PK\x03\x04"
    r = client.get(f"/checkpoints/{checkpoint_id}/download", params={"format": "onnx"})
    assert r.status_code == 422 and r.json()["detail"].startswith("format:")
    assert other_client.get(f"/checkpoints/{checkpoint_id}/download", params={"format": "openvino"}).status_code == 404


def test_the_zip_script_runs_without_flexbin(client: httpx.Client, binary_job: dict, tmp_path) -> None:
    import subprocess

    checkpoint_id = binary_job["selected_checkpoint_id"]
    r = client.get(f"/checkpoints/{checkpoint_id}/download", params={"format": "openvino"})
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        zf.extractall(tmp_path)
    image = default_data_dir() / "PNGImages" / "FudanPed00001.png"
    # -I: isolated (no cwd or repo on sys.path): the script cannot import FlexBin
    out = subprocess.run([sys.executable, "-I", str(tmp_path / "flexbin_detect.py"), str(tmp_path), str(image)],
                         capture_output=True, text=True, timeout=120, check=True)
    (result,) = json.loads(out.stdout)
    assert (result["width"], result["height"]) == (559, 536)
    assert all(len(d["box"]) == 4 for d in result["detections"])


def test_detect_runs_the_openvino_export(client: httpx.Client, binary_job: dict) -> None:
    image = (default_data_dir() / "PNGImages" / "FudanPed00001.png").read_bytes()
    r = client.post("/detect", files={"images": ("a.png", image, "image/png")},
                    data={"checkpoint_id": binary_job["selected_checkpoint_id"], "score_threshold": "0"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["width"] == 559


@pytest.mark.parametrize("body, field", [({"activation_bits": 8}, "activation_bits"),
                                         ({"activation_bits": 0}, "activation_bits"),
                                         ({"activation_bits": 1, "bits": 2}, "activation_bits 1 needs bits 1"),
                                         ({"distillation_weight": -0.5}, "distillation_weight"),
                                         ({"activation_quantizer": "scale_threshold"},
                                          "activation_quantizer scale_threshold needs activation_bits 1"),
                                         ({"activation_bits": 1, "activation_quantizer": "xnor"},
                                          "activation_quantizer"),
                                         ({"staged_schedule": True}, "staged_schedule needs activation_bits 1"),
                                         ({"rprelu": True}, "rprelu needs activation_bits 1"),
                                         ({"int8_max_drop": 0.01}, "int8_max_drop needs deploy_format openvino-int8"),
                                         ({"deploy_format": "openvino-int8", "int8_max_drop": -1}, "int8_max_drop"),
                                         ({"activation_bits": 1, "rprelu": "maybe"}, "rprelu"),
                                         ({"binarizer_lr_multiplier": 10}, "binarizer_lr_multiplier needs"),
                                         ({"activation_bits": 1, "binarizer_lr_multiplier": 0},
                                          "binarizer_lr_multiplier")])
def test_bad_job_options_answer_422(client: httpx.Client, body: dict, field: str) -> None:
    ids = upload_tiny(client, 4)
    r = client.post("/jobs", json={**ids, "target": {"min_compression_ratio": 2.0}, **body})
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_a_checkpoint_without_a_stored_ir_is_exported_on_download(client: httpx.Client, binary_job: dict,
                                                                   database_url: str) -> None:
    """Checkpoints made before exports existed (no IR row): the download exports and keeps one."""
    from service.store import Checkpoint, get_sessionmaker

    checkpoint_id = binary_job["steps"][0]["checkpoint_id"]
    with get_sessionmaker(database_url)() as s:
        s.get(Checkpoint, checkpoint_id).openvino_blob_id = None
        s.commit()
    before = client.get(f"/checkpoints/{checkpoint_id}").json()
    assert before["openvino"] is False and before["serving_backend"] == "torch"
    r = client.get(f"/checkpoints/{checkpoint_id}/download", params={"format": "openvino"})
    assert r.status_code == 200 and r.content[:4] == b"PK\x03\x04"
    assert client.get(f"/checkpoints/{checkpoint_id}").json()["openvino"] is True


def _compiled_precisions(zip_bytes: bytes) -> set[tuple[str, str]]:
    import openvino as ov

    from core.export.int8 import runtime_precisions

    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        model = ov.Core().read_model(model=zf.read("model.xml"), weights=zf.read("model.bin"))
    return set(runtime_precisions(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})))


def test_the_int8_download_is_made_once_with_nncf_and_keeps_the_1bit_layers(client: httpx.Client,
                                                                             binary_job: dict) -> None:
    float_id, binary_id = binary_job["steps"][0]["checkpoint_id"], binary_job["selected_checkpoint_id"]
    assert client.get(f"/checkpoints/{binary_id}").json()["files"]["openvino_int8"] is None
    r = client.get(f"/checkpoints/{binary_id}/download", params={"format": "openvino-int8"})
    assert r.status_code == 200, r.text
    assert "openvino-int8.zip" in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        card = json.loads(zf.read("card.json"))
        assert "int8" in zf.read("README.txt").decode()
    assert card["export"]["quantization"]["method"] == "nncf.quantize"
    mixed = _compiled_precisions(r.content)
    assert ("BinaryConvolution", "u1") in mixed  # the 1-bit layers stay 1-bit ...
    assert any(kind == "Convolution" and p in ("u8", "i8") for kind, p in mixed)  # ... the rest is int8
    # stored on first request: the same bytes again, and its real size in the checkpoint's record
    again = client.get(f"/checkpoints/{binary_id}/download", params={"format": "openvino-int8"})
    assert again.content == r.content
    files = client.get(f"/checkpoints/{binary_id}").json()["files"]
    assert files["openvino_int8"] == len(r.content) and files["openvino"] > 0 and files["safetensors"] > 0
    # a float checkpoint's int8 file is plain NNCF int8: every convolution int8
    plain = client.get(f"/checkpoints/{float_id}/download", params={"format": "openvino-int8"})
    precisions = _compiled_precisions(plain.content)
    assert not any(kind == "BinaryConvolution" for kind, _ in precisions)
    assert any(kind == "Convolution" and p in ("u8", "i8") for kind, p in precisions)


def test_a_deployment_can_serve_the_int8_file(client: httpx.Client, binary_job: dict) -> None:
    checkpoint_id = binary_job["selected_checkpoint_id"]
    r = client.put("/deployment", json={"checkpoint_id": checkpoint_id, "format": "openvino-int8"})
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "openvino-int8" == client.get("/deployment").json()["format"]
    image = (default_data_dir() / "PNGImages" / "FudanPed00001.png").read_bytes()
    r = client.post("/detect", files={"images": ("a.png", image, "image/png")}, data={"score_threshold": "0"})
    assert r.status_code == 200, r.text
    assert r.json()["checkpoint_id"] == checkpoint_id and r.json()["format"] == "openvino-int8"
    # naming the checkpoint runs it as trained; a format that does not exist is a 422 naming it
    r = client.post("/detect", files={"images": ("a.png", image, "image/png")}, data={"checkpoint_id": checkpoint_id})
    assert r.json()["format"] == "openvino"
    bad = client.put("/deployment", json={"checkpoint_id": checkpoint_id, "format": "onnx"})
    assert bad.status_code == 422 and "format" in bad.json()["detail"]
    assert client.put("/deployment", json={"checkpoint_id": checkpoint_id}).json()["format"] == "openvino"


def test_latency_targets_and_order_need_the_per_step_export(client: httpx.Client) -> None:
    """This suite's API runs with FLEXBIN_EXPORT_OPENVINO=false: latency cannot be measured, so a job
    that needs it is refused up front; nonsense values are 422s naming the field."""
    ids = upload_tiny(client, 4)
    for body in ({"target": {"max_latency_ms": 5.0}},
                 {"target": {"min_compression_ratio": 2.0}, "order": "latency", "activation_bits": 1},
                 {"target": {"min_compression_ratio": 2.0}, "deploy_format": "openvino-int8"}):
        r = client.post("/jobs", json={**ids, **body})
        assert r.status_code == 422 and "FLEXBIN_EXPORT_OPENVINO" in r.json()["detail"], r.text
    for target, field in (({"min_speedup": 0.5}, "min_speedup"), ({"max_latency_ms": -1}, "max_latency_ms"),
                          ({"max_latency_ms": 5, "min_speedup": 2}, "exactly one")):
        r = client.post("/jobs", json={**ids, "target": target})
        assert r.status_code == 422 and field in r.json()["detail"], r.text
    r = client.post("/jobs", json={**ids, "target": {"min_speedup": 2.0}, "order": "latency"})
    assert r.status_code == 422 and "order latency needs activation_bits 1" in r.json()["detail"]


@pytest.fixture(scope="module")
def int8_job(export_api_url: str, worker) -> dict:
    with httpx.Client(base_url=export_api_url, headers={"Authorization": f"Bearer {KEYS['beta']}"}, timeout=120) as c:
        bad = c.post("/jobs", json={**upload_tiny(c, 4), "target": {"max_latency_ms": 5}, "deploy_format": "onnx"})
        assert bad.status_code == 422 and "deploy_format" in bad.json()["detail"], bad.text
        return run_tiny_job(c, {"target": {"max_miss_rate_increase": 1.0}, "finetune_iters": 2, "batch_size": 2,
                                "activation_bits": 1, "min_layer_params": 0, "layers_per_step": 4, "seed": 4,
                                "deploy_format": "openvino-int8", "deploy_on_success": True})


def test_a_deploy_format_int8_job_measures_stores_and_deploys_each_steps_int8_file(export_api_url: str,
                                                                                   int8_job: dict) -> None:
    steps = int8_job["steps"]
    assert int8_job["config"]["deploy_format"] == "openvino-int8" and len(steps) >= 2
    with httpx.Client(base_url=export_api_url, headers={"Authorization": f"Bearer {KEYS['beta']}"}, timeout=120) as c:
        for step in steps:
            int8 = step["int8"]
            assert set(int8) == {"miss_rate", "ap50", "latency_ms", "file_bytes", "calibration_images", "max_drop",
                                 "after_1bit", "variants"}
            assert int8["max_drop"] is None and int8["after_1bit"] is False  # plain nncf.quantize, the default scope
            assert int8["variants"] == []  # one file made: int8_after_1bit is not "auto"
            checkpoint = c.get(f"/checkpoints/{step['checkpoint_id']}").json()
            assert checkpoint["int8"] == int8 and checkpoint["files"]["openvino_int8"] == int8["file_bytes"]
        # the file the job measured is the download: stored by the job, not made again
        selected = int8_job["selected_checkpoint_id"]
        r = c.get(f"/checkpoints/{selected}/download", params={"format": "openvino-int8"})
        assert r.status_code == 200 and len(r.content) == next(
            s["int8"]["file_bytes"] for s in steps if s["checkpoint_id"] == selected)
        assert ("BinaryConvolution", "u1") in _compiled_precisions(r.content)
        # deploy_on_success serves the selected step as the file the job judged
        deployment = c.get("/deployment").json()
        assert deployment["checkpoint_id"] == selected and deployment["format"] == "openvino-int8"
