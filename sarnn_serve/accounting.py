"""Compute accounting: the one place that turns update counts into multiply-adds.

Sessions, responses, metrics and the dashboard all report numbers from these functions.
A step of a dense cell computes every gate row for every neuron; the selective cell always
computes its coordinator (H x F input weights plus one diagonal weight per neuron) and then
only the gate rows of the neurons it updates. A cell without a coordinator (a dense baseline,
or one whose updates follow a fixed schedule: `with_coordinator=False`) pays only for its
updates, so a dense baseline's "selective" multiply-adds are its dense ones.
"""

from dataclasses import dataclass

GATES_PER_CELL = {"gru": 3, "lstm": 4, "rnn": 1}


@dataclass(frozen=True)
class CellCost:
    """Multiply-adds per step of one sequence for a cell of a given shape."""

    cell: str
    n_features: int
    hidden: int
    with_coordinator: bool = True
    coordinator_energy: bool = False
    coordinator_accumulate: bool = False
    coordinator_delta: bool = False
    coordinator_shared: bool = False

    @property
    def per_neuron(self) -> int:
        """Multiply-adds to update one neuron: its gate rows over input and state."""
        return GATES_PER_CELL[self.cell] * (self.n_features + self.hidden)

    @property
    def coordinator(self) -> int:
        """Multiply-adds of the coordinator: W_x x plus the diagonal w_d * h, plus W_e (x * x)
        with energy features (F squares and H x F products), plus one per neuron for an
        accumulating coordinator (its rate added to the accumulator), plus W_v |x_t - xbar|
        with motion features (F deviations, H x F products and F moving-average updates); 0
        without a coordinator. A shared gate (`coordinator_shared`) computes its input part
        once, not per neuron (F where H x F stood), and scales each neuron's rate by it in
        place of the diagonal term (H products)."""
        if not self.with_coordinator:
            return 0
        width = 1 if self.coordinator_shared else self.hidden
        energy = self.n_features * (width + 1) if self.coordinator_energy else 0
        accumulate = self.hidden if self.coordinator_accumulate else 0
        motion = self.n_features * (width + 2) if self.coordinator_delta else 0
        return width * self.n_features + self.hidden + energy + accumulate + motion

    @property
    def dense_step(self) -> int:
        """Multiply-adds of one step of the plain dense cell."""
        return self.hidden * self.per_neuron

    def selective(self, updates: int, steps: int = 1) -> int:
        """Multiply-adds the selective cell spends for `updates` neuron updates over `steps`."""
        return steps * self.coordinator + updates * self.per_neuron

    def per_step(self, update_rate: float) -> float:
        """Mean multiply-adds per step at an update rate (updates / (steps x H))."""
        return self.coordinator + update_rate * self.hidden * self.per_neuron

    def dense(self, steps: int) -> int:
        """Multiply-adds a dense cell spends over `steps`."""
        return steps * self.dense_step


@dataclass(frozen=True)
class Usage:
    """Totals of one chunk, session or model."""

    steps: int
    updates: int
    hidden: int
    macs_dense: int
    macs_selective: int

    @property
    def slots(self) -> int:
        """Neuron slots: steps x H."""
        return self.steps * self.hidden

    @property
    def update_rate(self) -> float:
        """Updates / (steps x H); 0 when nothing ran."""
        return self.updates / self.slots if self.slots else 0.0

    @property
    def macs_saved(self) -> int:
        """Multiply-adds the selective cell did not spend."""
        return self.macs_dense - self.macs_selective

    def as_dict(self) -> dict[str, int | float]:
        """The accounting fields every answer reports (the one list of them)."""
        return {
            "steps": self.steps,
            "updates": self.updates,
            "update_rate": self.update_rate,
            "macs_dense": self.macs_dense,
            "macs_selective": self.macs_selective,
            "macs_saved": self.macs_saved,
        }


def usage(cost: CellCost, steps: int, updates: int) -> Usage:
    """Account `steps` steps with `updates` neuron updates in total."""
    return Usage(
        steps=steps,
        updates=updates,
        hidden=cost.hidden,
        macs_dense=cost.dense(steps),
        macs_selective=cost.selective(updates, steps),
    )
