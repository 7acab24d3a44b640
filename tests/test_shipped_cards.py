"""Every shipped card says which data chose its recipe, and none was chosen on the test split."""

import json

import pytest

from tests.service_fixtures import SHIPPED_MODELS

CARDS = sorted(p.parent.name for p in SHIPPED_MODELS.glob("*/model.json"))


def test_the_repository_ships_models() -> None:
    assert len(CARDS) >= 2


@pytest.mark.parametrize("name", CARDS)
def test_a_shipped_card_names_the_split_that_chose_its_recipe(name: str) -> None:
    training = json.loads((SHIPPED_MODELS / name / "model.json").read_text())["training"]
    chosen_on = training.get("recipe_chosen_on") or ""
    assert "validation" in chosen_on, f"{name}: recipe_chosen_on is {chosen_on!r}"
    assert "test" not in chosen_on.lower(), f"{name}: {chosen_on!r}"
