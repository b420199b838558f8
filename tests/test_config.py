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


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("epochs", True, "'epochs' is True \\(bool\\), expected int"),
        ("epochs", 2.5, "'epochs' is 2.5 \\(float\\), expected int"),
        ("lr", "0.1", "'lr' is '0.1' \\(str\\), expected float"),
        ("detect_anomaly", 1, "'detect_anomaly' is 1 \\(int\\), expected bool"),
        ("data_dir", 3, "expected str \\| null"),
        ("budget_plan", [[2.0, 10.0]], "'budget_plan'.*expected tuple\\[tuple\\[int, int\\], \\.\\.\\.\\]"),
        ("budget_plan", [["2", "10"]], "'budget_plan'"),
        ("budget_plan", [[2, 10, 11]], "'budget_plan'"),
    ],
)
def test_config_values_are_type_checked_strictly(key, value, message):
    data = to_dict(TrainConfig(budget=60.0))
    data[key] = value
    with pytest.raises(VaelabError, match=message):
        from_dict(TrainConfig, data)


def test_nested_specs_are_type_checked_and_a_float_field_takes_an_int():
    data = to_dict(TrainConfig())
    data["model"]["latent_dims"] = [2.5]
    with pytest.raises(VaelabError, match="ModelSpec: 'latent_dims'"):
        from_dict(TrainConfig, data)
    data = to_dict(TrainConfig())
    data["objective"]["k"] = False
    with pytest.raises(VaelabError, match="ObjectiveSpec: 'k'"):
        from_dict(TrainConfig, data)
    data = to_dict(TrainConfig(budget=60.0, budget_plan=((0, 10), (4, 12))))
    data["lr"] = 1
    assert from_dict(TrainConfig, json.loads(json.dumps(data))) == TrainConfig(
        lr=1.0, budget=60.0, budget_plan=((0, 10), (4, 12))
    )
