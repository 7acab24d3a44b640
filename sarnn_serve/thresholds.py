"""The threshold each chunk of a session runs at: the session's own, steered toward its target
update rate over the model's measured threshold curve (`budget.RateControl`), and raised while
the server degrades under load, if the session allows it (`degrade.Degrader`)."""

import math

from sarnn_serve.accounting import Usage
from sarnn_serve.budget import RateControl, ThresholdCurve
from sarnn_serve.card import ModelCard
from sarnn_serve.degrade import Degrader
from sarnn_serve.errors import InvalidInput
from sarnn_serve.registry import ModelKey, Registry
from sarnn_serve.schemas import SessionCreate
from sarnn_serve.sessions import SessionRecord
from sarnn_serve.settings import Settings

DEGRADE_CEILING = 0.95  # highest degraded threshold of a model without a threshold curve


def prior_rate(card: ModelCard) -> float:
    """A new session's expected update rate: the card's evaluated rate (1 if unknown)."""
    rate = card.evaluation.update_rate
    return rate if math.isfinite(rate) else 1.0


class Thresholds:
    """Per model version, its threshold curve (None if not measured) and, per model with
    degradation on (SARNN_DEGRADE_QUEUE_MS), its degrader."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.curves: dict[ModelKey, ThresholdCurve | None] = {}
        self.degraders: dict[str, Degrader] = {}
        for model in registry.models.values():
            self.add(model.card)

    def add(self, card: ModelCard) -> Degrader | None:
        """Take in a model version's curve; its model's degrader (None: degradation off),
        made for its first version."""
        curve = ThresholdCurve.of(card)
        self.curves[card.name, card.version] = curve
        if not self.settings.degrade_queue_ms:
            return None
        return self.degraders.setdefault(
            card.name,
            Degrader(
                self.settings.degrade_queue_ms / 1000,
                ceiling=curve.high if curve else DEGRADE_CEILING,
                step=self.settings.degrade_step,
            ),
        )

    def drop(self, card: ModelCard) -> None:
        """Forget a released model version's curve."""
        self.curves.pop((card.name, card.version), None)

    def first(self, card: ModelCard, request: SessionCreate) -> float:
        """The threshold a new session starts at: the one asked for, the one its target update
        rate reads off the curve, or the card's."""
        if request.target_update_rate is None:
            return request.threshold if request.threshold is not None else card.threshold
        if request.threshold is not None:
            raise InvalidInput(
                "target_update_rate", "give threshold or target_update_rate, not both"
            )
        curve = self.curves[card.name, card.version]
        if curve is None:
            raise InvalidInput(
                "target_update_rate",
                f"model {card.name} has no measured threshold curve to steer by; "
                "set threshold instead",
            )
        return RateControl(request.target_update_rate).start(curve)

    def now(self, record: SessionRecord) -> float:
        """The threshold the session's next chunk runs at: its own, raised while the server
        degrades, if the session allows it."""
        degrader = self.degraders.get(record.model)
        if not record.degrade or degrader is None:
            return record.threshold
        return degrader.threshold(record.threshold)

    def steer(self, record: SessionRecord, card: ModelCard, threshold: float, used: Usage) -> None:
        """After a chunk: the controller of a session held to a target rate sets the threshold
        of the next chunk (not while degradation overrides it: no wind-up against it)."""
        record.last_threshold = threshold
        if record.target_rate is None or threshold != record.threshold:
            return
        control = RateControl(record.target_rate, record.control_offset)
        curve = self.curves[card.name, card.version]
        record.threshold = control.after_chunk(curve, used.steps, used.updates, card.hidden)
        record.control_offset = control.offset

    def accuracy_at(self, card: ModelCard, threshold: float) -> float | None:
        """The accuracy the model version's curve expects at `threshold` (None: no curve)."""
        curve = self.curves.get((card.name, card.version))
        return curve.accuracy_at(threshold) if curve else None
