"""Model cards stay readable by the previous release: a field added this round is written only
when it says something the previous reader would have to know."""

import json

from sarnn_serve.card import ModelCard
from tests.service_fixtures import SHIPPED_MODELS


def _card(name: str) -> dict:
    """A shipped model's card, from the repository's models/ (an installed wheel has none)."""
    return json.loads((SHIPPED_MODELS / name / "model.json").read_text())


def test_a_card_without_energy_features_does_not_mention_them() -> None:
    card = ModelCard.model_validate(_card("watch-stream-dense62"))
    assert not card.coordinator_energy
    assert "coordinator_energy" not in json.loads(card.model_dump_json())
    assert "coordinator_energy" not in _card("watch-stream-dense62")


def test_a_card_with_energy_features_says_so() -> None:
    card = ModelCard.model_validate(_card("watch-stream-sa"))
    assert card.coordinator_energy
    assert json.loads(card.model_dump_json())["coordinator_energy"] is True
    # W_x x, w_d h, W_e (x * x), the accumulator's addition and the motion features
    assert card.cost.coordinator == 128 * 7 + 6 * 129 + 128 + 6 * 130


def test_only_an_accumulating_card_mentions_the_accumulator() -> None:
    card = ModelCard.model_validate(_card("watch-stream-sa"))
    assert card.coordinator_accumulate and card.state_size == 2 * 128 + 6  # h, acc, average
    plain = ModelCard.model_validate(_card("watch-gru"))
    assert not plain.coordinator_accumulate and plain.state_size == 128
    assert "coordinator_accumulate" not in json.loads(plain.model_dump_json())
    assert "coordinator_accumulate" not in _card("watch-gru")
