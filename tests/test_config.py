"""Configs: strict JSON round trip, unknown keys and out-of-range values refused."""

import json

import pytest

from vaelab.config import EvaluateConfig, ModelSpec, TrainConfig, from_dict, load_json, save_json, to_dict
from vaelab.errors import VaelabError


def test_round_trip_through_json(tmp_path):
    config = TrainConfig(epochs=3, model=ModelSpec(hidden=17, latent_dims=4), binarize="dynamic")
    save_json(config, tmp_path / "config.json")
    assert load_json(TrainConfig, tmp_path / "config.json") == config
    evaluate = EvaluateConfig(checkpoint="runs/x", ks=(1, 7))
    assert from_dict(EvaluateConfig, json.loads(json.dumps(to_dict(evaluate)))) == evaluate


def test_defaults_are_the_templates():
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.lr, config.seed) == (10, 128, 1e-3, 1)
    assert (config.model.input_dim, config.model.hidden, config.model.latent_dim) == (784, (400,), 20)


def test_unknown_keys_are_refused_by_name():
    data = to_dict(TrainConfig())
    data["epoch"] = 5
    with pytest.raises(VaelabError, match="unknown TrainConfig key.*epoch"):
        from_dict(TrainConfig, data)
    data = to_dict(TrainConfig())
    data["model"]["latent"] = 5
    with pytest.raises(VaelabError, match="unknown ModelSpec key.*latent"):
        from_dict(TrainConfig, data)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"binarize": "yes"}, "--binarize"),
        ({"dataset": "cifar"}, "--dataset"),
        ({"denormals": "fast"}, "--denormals must be one of flush, keep"),
    ],
)
def test_out_of_range_values_name_the_option(changes, message):
    with pytest.raises(VaelabError, match=message):
        TrainConfig(**changes)


def test_model_sizes_must_be_positive():
    with pytest.raises(VaelabError, match="--latent-dim must be >= 1"):
        ModelSpec(latent_dims=0)
    with pytest.raises(VaelabError, match="--k values"):
        EvaluateConfig(ks=(0,))


def test_unreadable_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(VaelabError, match="cannot read config"):
        load_json(TrainConfig, tmp_path / "config.json")
