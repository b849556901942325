"""The quantizer registry (`core.binary.quantizers`): one contract every registered quantizer
keeps (config round trip, straight-through gradient, and for weight quantizers an exact pack /
unpack whose size is `packed_nbytes`), the job config naming them, and checkpoint cards that
record them per layer while older cards (bits only) still load."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, get_args

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from core.binary import (
    QUANTIZERS,
    KBitQuantizer,
    Quantizer,
    SignQuantizer,
    WeightQuantizer,
    binarize_module,
    quantizer_from_config,
    weight_quantizer,
    weight_quantizer_of,
)
from core.checkpoint import (
    META_KEY,
    ModelCard,
    load_state,
    pack_checkpoint,
    save_state,
    unpack_checkpoint,
)
from core.job_spec import PipelineConfig, Target, WeightQuantizerName

# Configs to try for each registered quantizer: its defaults, and more where it has knobs.
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "sign": [{}],
    "kbit": [{}, {"bits": 1}, {"bits": 3, "iterations": 0}, {"bits": 4, "iterations": 5}],
    # input binarizers: one threshold per channel of the [N, 5, ...] input (and an RPReLU for 3 outputs)
    "rsign": [{"channels": 5}, {"channels": 5, "rprelu_channels": 3}],
    "scale_threshold": [{"channels": 5}, {"channels": 5, "rprelu_channels": 3}],
}
# The straight-through gradient inside the clipping window: 1 for the ±1 weight quantizers (the
# hard tanh's slope), 1/2 for `rsign`, whose outputs are {0, 1} (the hard sigmoid's), 1 for
# `scale_threshold`, whose outputs are {0, s}.
STE_SLOPE = {"sign": 1.0, "kbit": 1.0, "rsign": 0.5, "scale_threshold": 1.0}
# ... and the window: |x| <= 1, except `scale_threshold`'s 0 <= x <= s (PACT's, as NNCF's).
STE_WINDOW: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "scale_threshold": lambda q, x: (x >= 0) & (x <= q.output_scale())}
CASES = [(name, config) for name in QUANTIZERS for config in CONFIGS.get(name, [{}])]


def test_every_registered_quantizer_has_contract_cases() -> None:
    assert set(CONFIGS) == set(QUANTIZERS) == set(STE_SLOPE), "add the new quantizer to CONFIGS and STE_SLOPE"


@pytest.fixture(params=CASES, ids=[f"{n}{c or ''}" for n, c in CASES])
def quantizer(request: pytest.FixtureRequest) -> Quantizer:
    name, config = request.param
    return quantizer_from_config({"name": name, **config})


def _input(shape: tuple[int, ...] = (6, 5, 3, 3), seed: int = 0) -> torch.Tensor:
    return 1.5 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_config_round_trips_through_json(quantizer: Quantizer) -> None:
    config = quantizer.to_config()
    again = quantizer_from_config(json.loads(json.dumps(config)))
    assert type(again) is type(quantizer) and again.to_config() == config
    assert QUANTIZERS[config["name"]] is type(quantizer) and quantizer.kind in ("weight", "activation")
    x = _input()
    assert torch.equal(again(x), quantizer(x))


def test_straight_through_gradient(quantizer: Quantizer) -> None:
    """Gradients pass (times the quantizer's STE slope) inside the clipping window (|x| <= 1
    unless STE_WINDOW says otherwise) and are 0 outside it."""
    x = _input(seed=1).requires_grad_()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    quantizer(x).backward(upstream)
    assert x.grad is not None
    window = STE_WINDOW.get(quantizer.name, lambda _, v: v.abs() <= 1)(quantizer, x.detach())
    assert window.any() and not window.all(), "the window must cut somewhere for this test to mean anything"
    assert torch.equal(x.grad, torch.where(window, STE_SLOPE[quantizer.name] * upstream, 0.0))


def test_weight_quantizer_packs_exactly_what_it_computes(quantizer: Quantizer) -> None:
    if not isinstance(quantizer, WeightQuantizer):
        pytest.skip(f"{quantizer.kind} quantizers store nothing")
    for shape in [(6, 5, 3, 3), (7, 13), (1, 1, 1, 1)]:
        w = _input(shape, seed=3)
        value = quantizer(w)
        assert value.shape == w.shape and value.dtype == w.dtype
        assert torch.equal(quantizer.fit(w).reconstruct(), value)  # fit is the forward, exactly
        packed = quantizer.pack(w)
        assert all(t.device.type == "cpu" and t.is_contiguous() for t in packed.values())
        assert sum(math.prod(t.shape) * t.element_size() for t in packed.values()) == quantizer.packed_nbytes(shape)
        assert torch.equal(quantizer.unpack(packed, shape), value)
        assert len(set(value[0].abs().flatten().tolist())) <= 2 ** quantizer.bits  # at most 2^k levels


def test_the_registry_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unknown quantizer 'ternary'; registered: kbit, rsign, scale_threshold, sign"):
        quantizer_from_config({"name": "ternary"})
    with pytest.raises(ValueError, match="quantizer sign: .*'bits'"):
        quantizer_from_config({"name": "sign", "bits": 1})
    with pytest.raises(ValueError, match="bits must be an integer in \\[1, 8\\]"):
        quantizer_from_config({"name": "kbit", "bits": 9})
    with pytest.raises(ValueError, match="already registered"):
        from core.binary import register_quantizer

        register_quantizer(type("Again", (SignQuantizer,), {}))


def test_bits_name_the_quantizer_as_before() -> None:
    """`bits: 1` is `sign`, `bits: k > 1` is `kbit` with k bases, in the job config and in code."""
    assert PipelineConfig(target=Target(min_compression_ratio=2.0)).weight_quantizer == "sign"
    assert PipelineConfig(target=Target(min_compression_ratio=2.0), bits=3).weight_quantizer == "kbit"
    assert isinstance(weight_quantizer(1), SignQuantizer)
    assert weight_quantizer(3).to_config() == KBitQuantizer(3).to_config() == {"name": "kbit", "bits": 3,
                                                                                "iterations": 3}
    assert weight_quantizer(1, "kbit").bits == 1
    with pytest.raises(ValidationError, match="weight_quantizer sign has 1 bit per weight, not bits=2"):
        PipelineConfig(target=Target(min_compression_ratio=2.0), bits=2, weight_quantizer="sign")
    with pytest.raises(ValueError, match="quantizer sign has 1 bit per weight, not 2"):
        weight_quantizer(2, "sign")
    # an old job row (no weight_quantizer in its config) reads as before
    old = PipelineConfig.model_validate({"target": {"min_compression_ratio": 2.0}, "bits": 2})
    assert old.weight_quantizer == "kbit"


def test_the_job_config_names_exactly_the_registered_weight_quantizers() -> None:
    registered = {name for name, cls in QUANTIZERS.items() if issubclass(cls, WeightQuantizer)}
    assert set(get_args(WeightQuantizerName)) == registered
    for name in registered:  # every (name, bits) the job config accepts builds, and no other
        for bits in range(1, 5):
            accepted = True
            try:
                PipelineConfig(target=Target(min_compression_ratio=2.0), bits=bits, weight_quantizer=name)
            except ValidationError:
                accepted = False
            try:
                built = weight_quantizer(bits, name)
            except ValueError:
                built = None
            assert accepted == (built is not None) and (built is None or built.bits == bits)


@pytest.fixture
def tiny() -> tuple[nn.Module, ModelCard]:
    torch.manual_seed(0)
    card = ModelCard(architecture="flexbin_pednet", width=4, input_size=64)
    return card.build().eval(), card


def test_the_card_records_each_layers_quantizer(tiny: tuple[nn.Module, ModelCard]) -> None:
    model, card = tiny
    modules = dict(model.named_modules())
    binarize_module(modules["neck.0"], SignQuantizer())
    binarize_module(modules["features.6.0"], KBitQuantizer(2, iterations=1))
    packed = pack_checkpoint(model, card)
    served, served_card = unpack_checkpoint(packed)
    assert served_card.binary_layers == {"features.6.0": 2, "neck.0": 1}
    assert served_card.weight_quantizers == {"features.6.0": {"name": "kbit", "bits": 2, "iterations": 1},
                                             "neck.0": {"name": "sign"}}
    for name in ("neck.0", "features.6.0"):
        assert torch.equal(dict(served.named_modules())[name].weight, modules[name].weight.detach())
    # the resume state keeps the quantizers too (the same iterations, so the same forward)
    restored = dict(load_state(card, save_state(model)).named_modules())
    assert weight_quantizer_of(restored["features.6.0"]).to_config() == {  # type: ignore[union-attr]
        "name": "kbit", "bits": 2, "iterations": 1}


def test_a_checkpoint_whose_card_has_only_bits_still_loads(tiny: tuple[nn.Module, ModelCard]) -> None:
    """Checkpoints written before quantizers had names: `binary_layers: {layer: bits}` only."""
    from safetensors.torch import load, save

    model, card = tiny
    modules = dict(model.named_modules())
    binarize_module(modules["neck.0"], 1)
    binarize_module(modules["features.6.0"], 3)
    packed = pack_checkpoint(model, card)
    header = json.loads(packed[8:8 + int.from_bytes(packed[:8], "little")])
    meta = json.loads(header["__metadata__"][META_KEY])
    del meta["card"]["weight_quantizers"]
    old = save(load(packed), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    served, served_card = unpack_checkpoint(old)
    assert served_card.weight_quantizers == {} and served_card.binary_layers == {"features.6.0": 3, "neck.0": 1}
    for name in ("neck.0", "features.6.0"):
        assert torch.equal(dict(served.named_modules())[name].weight, modules[name].weight.detach())
    # and an old resume state (bits only) resumes with the default quantizers
    state = save_state(model)
    state_meta = json.loads(json.loads(state[8:8 + int.from_bytes(state[:8], "little")])["__metadata__"][META_KEY])
    old_state = save(load(state), metadata={"binary_layers": json.dumps(state_meta["binary_layers"])})
    restored = dict(load_state(card, old_state).named_modules())
    assert isinstance(weight_quantizer_of(restored["neck.0"]), SignQuantizer)
    assert weight_quantizer_of(restored["features.6.0"]).to_config() == weight_quantizer(3).to_config()  # type: ignore[union-attr]
