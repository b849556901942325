"""pedestrian_adas_0002 through the API: described with its input size and licence, and its
bundled weights upload like any model's (also at another input size)."""
from __future__ import annotations

import json

from core.pretrained import PRETRAINED
from testkit.factories import tiny_model
from tests.integration.test_uploads import post_model

NAME = "pedestrian_adas_0002"


def test_architectures_say_where_pretrained_weights_come_from(client) -> None:
    archs = {a["name"]: a for a in client.get("/architectures").json()}
    adas = archs[NAME]
    assert adas["input_size"] == 672
    assert (adas["default_kwargs"]["input_height"], adas["default_kwargs"]["input_width"]) == (384, 672)
    assert adas["pretrained"]["license"] == "Apache-2.0"
    assert "Open Model Zoo" in adas["pretrained"]["origin"]
    assert adas["pretrained"]["sha256"] == PRETRAINED[NAME].weights_sha256
    assert archs["flexbin_pednet"]["pretrained"] is None


def test_the_bundled_weights_upload_as_a_model(client, db_counts) -> None:
    folder = PRETRAINED[NAME].directory
    weights, card = (folder / "weights.safetensors").read_bytes(), (folder / "card.json").read_text()
    r = post_model(client, weights, card)
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["architecture"] == NAME and model["size_bytes"] == len(weights)
    assert model["num_params"] == 1_165_032
    stored = client.get(f"/models/{model['id']}").json()["card"]
    assert stored["provenance"]["license"] == "Apache-2.0" and stored["input_height"] == 384

    # the same weights at half the input size (priors follow the size; the weights do not change)
    half = post_model(client, weights, json.dumps({**json.loads(card), "input_height": 192, "input_width": 336}))
    assert half.status_code == 201, half.text
    assert client.get(f"/models/{half.json()['id']}").json()["card"]["input_width"] == 336

    before = db_counts()
    other_weights, _ = tiny_model()
    r = post_model(client, other_weights, card)  # PedNet's tensors under this architecture's card
    assert r.status_code == 422 and "tensor" in r.json()["detail"], r.text
    r = post_model(client, weights, json.dumps({**json.loads(card), "input_width": 100_000}))
    assert r.status_code == 422 and "input_width" in r.json()["detail"], r.text
    assert db_counts() == before
