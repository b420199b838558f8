"""The budget presets: `vaelab train --budget T` without --preset takes the one measured best nearest T."""

import math

import pytest

from vaelab.errors import VaelabError
from vaelab.presets import BUDGET_PRESETS, PRESETS, preset_for_budget


def test_each_measured_budget_gets_its_own_preset_and_others_the_nearest_on_a_log_scale():
    budgets = [budget for budget, _ in BUDGET_PRESETS]
    assert budgets == sorted(budgets) and len(set(budgets)) == len(budgets)
    for budget, name in BUDGET_PRESETS:
        assert preset_for_budget(budget) == name
        config = PRESETS[name].config
        assert config.budget > 0 and config.patience == 0  # a budget preset runs to its budget
    for (low, low_name), (high, high_name) in zip(BUDGET_PRESETS, BUDGET_PRESETS[1:]):
        middle = math.sqrt(low * high)  # the geometric midpoint between two measured budgets
        assert preset_for_budget(middle * 0.99) == low_name and preset_for_budget(middle * 1.01) == high_name
    assert preset_for_budget(budgets[0] / 100) == BUDGET_PRESETS[0][1]
    assert preset_for_budget(budgets[-1] * 100) == BUDGET_PRESETS[-1][1]


@pytest.mark.parametrize("seconds", [0.0, -5.0, math.nan])
def test_a_budget_that_is_not_a_positive_time_is_refused(seconds):
    with pytest.raises(VaelabError, match="positive"):
        preset_for_budget(seconds)
