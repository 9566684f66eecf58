"""bench/ablations.py's variants must stay valid configs that each change the recipe (no ../shared needed)."""

from __future__ import annotations

import pytest

from bench.ablations import TASK, VARIANTS
from bench.quality import task_config
from trainer.config import to_dict


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_is_a_valid_change_of_the_recipe(name: str) -> None:
    recipe = to_dict(task_config(TASK, []))
    variant = to_dict(task_config(TASK, VARIANTS[name][1]))
    changed = {section for section in recipe if recipe[section] != variant[section]}
    # "recipe" is the reference itself; every other variant changes exactly one section of it.
    assert len(changed) == (0 if name == "recipe" else 1), changed
