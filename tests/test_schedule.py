"""Schedules over the run's fraction, and the wall-clock budget: its plan follows the clock, ends with the
budget, and replays bit for bit without it."""

import json
import math

import pytest
import torch

from conftest import run_ok, run_refused
from vaelab import checkpoint
from vaelab.config import ModelSpec, ObjectiveSpec, TrainConfig, load_json
from vaelab.errors import VaelabError
from vaelab.presets import PRESETS, preset_for_budget
from vaelab.training import train
from vaelab.training import loop, schedule
from vaelab.training.schedule import BudgetPlan, learning_rate_at, parse_duration, warmup_weight

SMALL = ModelSpec(input_dim=16, hidden=12, latent_dims=2)


def budget_config(**changes):
    settings = {"model": SMALL, "epochs": 1000, "batch_size": 8, "lr": 1e-2, "budget": 1.0}
    return TrainConfig(**{**settings, **changes})


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("90s", 90), ("30m", 1800), ("30min", 1800), ("2h", 7200), ("1h30m", 5400), ("0.5s", 0.5)],
)
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "30x", "-5", "0", "m", "30m fast"])
def test_a_bad_duration_names_the_forms(text):
    with pytest.raises(VaelabError, match="90s, 30m, 2h"):
        parse_duration(text)


def test_learning_rate_warms_up_then_follows_the_cosine():
    run = budget_config(lr=1e-2, lr_schedule="cosine", lr_final=0.0, lr_warmup=0.1)
    assert learning_rate_at(run, 0.0) == 0.0
    assert learning_rate_at(run, 0.05) == pytest.approx(0.5 * 1e-2 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert learning_rate_at(run, 0.5) == pytest.approx(0.5e-2)
    assert learning_rate_at(run, 1.0) == pytest.approx(0.0, abs=1e-18)
    assert learning_rate_at(run, 2.0) == learning_rate_at(run, 1.0)  # past the end: the last value


def test_kl_warmup_over_a_fraction():
    run = budget_config(warmup_fraction=0.25)
    assert [warmup_weight(run, f) for f in (0.0, 0.125, 0.25, 0.9)] == [0.0, 0.5, 1.0, 1.0]
    assert warmup_weight(budget_config(), 0.0) == 1.0


def simulate(plan, seconds_per_step, steps_limit=100_000, first_steps_slower=5.0):
    """Run `plan` against a fake clock: each step takes seconds_per_step(step) (the first ones slower)."""
    elapsed, step = 0.0, 0
    while step < steps_limit:
        plan.observe(step, elapsed)
        if plan.done(step):
            return step, elapsed
        elapsed += seconds_per_step(step) * (first_steps_slower if step == 0 else 1.0)
        step += 1
    raise AssertionError("the plan never ended")


def test_the_plan_ends_with_the_budget_at_a_steady_speed():
    plan = BudgetPlan(budget=60.0)
    steps, elapsed = simulate(plan, lambda step: 0.01)
    assert abs(elapsed - 60.0) < 0.05  # within a few steps of the budget, despite the slow first step
    assert steps == plan.steps
    assert len(plan.entries) >= 1 / schedule.REPLAN_EVERY - 1  # re-planned along the way
    fractions = [plan.fraction(step) for step in range(steps)]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] > 0.99


def test_the_plan_follows_a_machine_that_slows_down():
    """Half way through the steps take twice as long: the plan shrinks and still ends near the budget."""
    plan = BudgetPlan(budget=100.0)
    steps, elapsed = simulate(plan, lambda step: 0.01 if step < 5000 else 0.02)
    assert abs(elapsed - 100.0) < 100.0 * schedule.REPLAN_EVERY * 1.5
    assert plan.entries[1][1] > steps  # the early plan expected more steps than the slowed machine took


def test_a_recorded_plan_replays_without_the_clock():
    live = BudgetPlan(budget=10.0)
    steps, _ = simulate(live, lambda step: 0.003)
    replay = BudgetPlan.for_run(budget_config(budget=10.0, budget_plan=tuple(live.entries)))
    assert not replay.live
    replayed, _ = simulate(replay, lambda step: 1.0)  # a machine 300x slower: the same steps regardless
    assert replayed == steps
    assert [replay.fraction(s) for s in range(steps)] == [live.fraction(s) for s in range(steps)]


def test_budget_settings_are_checked():
    with pytest.raises(VaelabError, match="--warmup-fraction 0.2"):
        budget_config(objective=ObjectiveSpec(warmup_epochs=5))
    with pytest.raises(VaelabError, match="give one"):
        budget_config(max_seconds=10)
    with pytest.raises(VaelabError, match="needs budget"):
        budget_config(budget=0.0, budget_plan=((2, 10),))
    with pytest.raises(VaelabError, match="steps increasing"):
        budget_config(budget_plan=((2, 10), (1, 12)))
    with pytest.raises(VaelabError, match="fraction of the run"):
        budget_config(lr_warmup=1.5)
    with pytest.raises(VaelabError, match="does not have"):
        budget_config(objective=ObjectiveSpec(name="iwae", k=2), warmup_fraction=0.1)


def prototypes(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.tensor([[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [1.0] * 8])
    which = torch.randint(0, 2, (n,), generator=generator)
    return (base[which] + (torch.rand(n, 16, generator=generator) < 0.05)).remainder(2)


class TickingClock:
    """Stands in for the training loop's `time`: each reading of the clock is `tick` seconds after the last,
    so a budget run takes the same steps however loaded the machine is."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def perf_counter(self):
        self.now += self.tick
        return self.now


def test_a_budget_run_stops_at_its_plan_and_replays_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "time", TickingClock(tick=0.01))  # about one tick per step: ~150 steps
    run = budget_config(budget=1.5, lr_schedule="cosine", warmup_fraction=0.3, binarize="dynamic", threads=1)
    train_x, test_x = torch.rand(120, 16), torch.rand(16, 16)
    result = train(run, train_x, test_x, tmp_path / "live", progress=False)
    assert result.stopped == "budget"
    assert result.history[-1]["steps"] == result.budget_plan[-1][1]  # it stopped exactly at the planned count
    assert len(result.history) > 1 and len(result.budget_plan) > 10  # over several epochs, re-planned on the way
    assert abs(sum(row["seconds"] for row in result.history) - 1.5) < 0.1  # the loop's clock: budget spent, no more
    assert result.history[-1]["lr"] < 0.05 * run.lr  # the cosine ran out with the budget

    monkeypatch.setattr(loop, "time", TickingClock(tick=1.0))  # a machine 100x slower: a replay ignores it
    replay = train(
        TrainConfig(**{**run.__dict__, "budget_plan": tuple(result.budget_plan)}), train_x, test_x, progress=False
    )
    assert replay.stopped == "budget" and len(replay.history) == len(result.history)
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, replay.model.state_dict()[name]), name
    saved = checkpoint.load(tmp_path / "live")
    assert [tuple(entry) for entry in saved["budget_plan"]] == result.budget_plan


def test_a_budget_run_resumed_mid_way_ends_like_the_replay(tmp_path):
    """Interrupted after its first epoch, the run continues its own plan; its replay gives the same model."""
    run = budget_config(budget=1.2, lr_schedule="cosine", threads=1, epochs=1)
    train_x, test_x = prototypes(200), prototypes(16, seed=1)
    first = train(run, train_x, test_x, tmp_path, progress=False)
    assert first.stopped in ("completed", "budget")
    if first.stopped == "budget":
        pytest.skip("this machine spent the whole budget in the first epoch")
    resumed = train(
        TrainConfig(**{**run.__dict__, "epochs": 1000}),
        train_x,
        test_x,
        tmp_path,
        resume_state=checkpoint.load(tmp_path),
        progress=False,
    )
    assert resumed.stopped == "budget"
    replay = train(
        TrainConfig(**{**run.__dict__, "epochs": 1000, "budget_plan": tuple(resumed.budget_plan)}),
        train_x,
        test_x,
        progress=False,
    )
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, replay.model.state_dict()[name]), name


TINY = ["--dataset", "idx", "--batch-size", "8", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


def test_budget_through_the_cli_records_its_plan_and_config_replays_it(tiny_idx_dir, tmp_path, capsys):
    data_dir, first, again = tiny_idx_dir(n_train=48, n_test=8), tmp_path / "first", tmp_path / "again"
    chosen = preset_for_budget(2.0)  # no --preset: the one measured best for the budget, shrunk to the tiny data
    small_preset = ["--validation-size", "8"]
    if PRESETS[chosen].config.model.prior == "vamp":
        small_preset += ["--pseudo-inputs", "4"]
    text = run_ok(
        [
            "train",
            *TINY,
            *small_preset,
            "--data-dir",
            str(data_dir),
            "--out",
            str(first),
            "--budget",
            "2s",
            "--threads",
            "1",
        ],
        capsys,
    )
    assert "the --budget of 2 s was spent" in text and "config.json records the plan" in text
    assert f"with preset {chosen}, the preset measured best for it" in text
    recorded = load_json(TrainConfig, first / "config.json")
    assert recorded.budget == 2.0 and recorded.budget_plan and recorded.preset == chosen
    run_ok(["train", "--config", str(first / "config.json"), "--out", str(again), "--no-progress"], capsys)
    assert json.loads((again / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    a, b = checkpoint.load(first), checkpoint.load(again)
    assert all(torch.equal(value, b["model"][name]) for name, value in a["model"].items())
    run_refused(
        ["train", *TINY, "--data-dir", str(data_dir), "--out", str(tmp_path / "x"), "--budget", "soon"],
        capsys,
        "not a duration",
    )
    run_refused(
        [
            "train",
            *TINY,
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path / "y"),
            "--preset",
            "vampprior",
            "--budget",
            "1m",
        ],
        capsys,
        "--warmup-fraction",
    )
