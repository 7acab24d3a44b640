"""The model card: what `models/<name>/model.json` says about the graph beside it."""

from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from sarnn_serve.accounting import GATES_PER_CELL, CellCost

CARD_FORMAT = "sarnn-chunk/1"
GRAPH_INPUTS = ("x", "state", "lengths", "threshold")
GRAPH_OUTPUTS = ("logits", "updates", "state_out")


class TrainingInfo(BaseModel):
    """How the weights were made: enough to reproduce them."""

    dataset: str
    recipe: str = Field(description="The command that trains this model.")
    seed: int
    lam: float
    steps: int = Field(description="Optimiser steps taken.")
    train_subjects: list[int] = []
    test_subjects: list[int] = []
    val_subjects: list[int] = []
    groups: dict[str, list[str]] | None = Field(
        None,
        description="Groups (e.g. subjects) of the train, val and test recordings, as text.",
    )
    budget: str | None = Field(None, description="Budget loss form: mean or sum.")
    target_rate: float | None = Field(None, description="Update rate lambda was adapted to.")
    gate_grad: str | None = Field(None, description="Gate gradient surrogate: smooth or band.")
    recipe_chosen_on: str | None = Field(
        None, description="Which data chose the recipe (e.g. validation subjects 7-8)."
    )
    streams: str | None = Field(
        None, description="Trained and evaluated on information-sparse streams of this variant."
    )


class Evaluation(BaseModel):
    """Held-out figures of the trained model."""

    streaming_accuracy: float
    last_step_accuracy: float
    update_rate: float
    idle_update_rate: float | None = Field(
        None, description="Update rate on the idle steps of information-sparse streams."
    )
    active_update_rate: float | None = Field(
        None, description="Update rate on the activity steps of information-sparse streams."
    )


class ThresholdPoint(BaseModel):
    """The model at one serve-time threshold, on the validation recordings."""

    threshold: float
    update_rate: float
    val_streaming_accuracy: float


class SpreadFigures(BaseModel):
    """Accuracy over the seeds of one recipe: mean and sample sd (0 for one seed)."""

    streaming_accuracy_mean: float
    streaming_accuracy_sd: float
    last_step_accuracy_mean: float
    last_step_accuracy_sd: float
    update_rate_mean: float


class SeedSpread(BaseModel):
    """The recipe of this model trained at several seeds (this model's seed among them)."""

    seeds: list[int]
    validation: SpreadFigures
    test: SpreadFigures
    macs_per_step_mean: float = Field(
        description="Multiply-adds per step at the validation update rate, mean over seeds."
    )


class ExportInfo(BaseModel):
    """Which tools wrote the graph."""

    exporter: str
    opset: int
    onnx_version: str
    torch_version: str


class CostPerStep(BaseModel):
    """Multiply-adds per step of one sequence: the dense cell, and the selective cell at the
    evaluated update rate (coordinator included). For a dense baseline (`selective` false) both
    are the dense cell's."""

    dense_macs: int
    selective_macs: float
    gates_per_neuron: int


class ModelCard(BaseModel):
    """Self-description of one exported SA-RNN chunk graph."""

    model_config = ConfigDict(extra="forbid")

    format: str = CARD_FORMAT
    name: str
    version: str
    cell: str = Field(pattern="^(gru|lstm|rnn)$")
    n_features: int = Field(gt=0)
    hidden: int = Field(gt=0)
    n_classes: int = Field(gt=0)
    feature_names: list[str]
    class_labels: list[str]
    sample_rate_hz: float | None = None
    threshold: float = Field(default=0.5, gt=0, lt=1)
    alpha: float = Field(gt=0, description="Final hard-sigmoid slope; sets the gate's threshold.")
    selective: bool = Field(
        default=True,
        description="False for a dense baseline: no coordinator, every neuron updates every step.",
    )
    coordinator_energy: bool = Field(
        default=False,
        exclude_if=lambda energy: not energy,  # cards without it stay readable by older readers
        description="The coordinator also weighs the squared normalised inputs, W_e (x * x).",
    )
    coordinator_accumulate: bool = Field(
        default=False,
        exclude_if=lambda accumulate: not accumulate,  # older readers read cards without it
        description="The coordinator asks for an update rate per neuron, which an accumulator "
        "(H more numbers of state) turns into evenly spaced updates; the threshold tau scales "
        "the rate by (1 - tau) / tau.",
    )
    coordinator_delta: bool = Field(
        default=False,
        exclude_if=lambda delta: not delta,  # older readers read cards without it
        description="The accumulating coordinator also weighs how far each input stands from "
        "its moving average, W_v |x_t - xbar| / std; the average (F more numbers of state, "
        "after the accumulator) is carried.",
    )
    random_mask: float | None = Field(
        default=None,
        gt=0,
        le=1,
        exclude_if=lambda rate: rate is None,  # older readers read cards without it
        description="A random-mask baseline (selective false): each neuron updates where a "
        "fixed seeded pattern of the graph says, at this rate, whatever the input; its place "
        "in the pattern is the state's last number.",
    )
    training: TrainingInfo
    evaluation: Evaluation
    validation: Evaluation | None = Field(
        None, description="The same figures on the validation recordings (`evaluation`: test)."
    )
    threshold_curve: list[ThresholdPoint] | None = Field(
        None,
        description="Update rate and validation streaming accuracy at thresholds 0.05 .. 0.95: "
        "what turning the threshold buys or costs.",
    )
    cost_per_step: CostPerStep | None = None
    seed_spread: SeedSpread | None = Field(
        None, description="Validation and test figures of the same recipe over several seeds."
    )
    export: ExportInfo | None = None
    sparse_graph: str | None = Field(
        None,
        description="File of the sparse twin of model.onnx (same inputs, outputs and answers; "
        "computes only the rows of neurons that update), if exported.",
    )
    notes: list[str] = Field(
        default_factory=list, description="What a user should know (e.g. trained briefly)."
    )

    @property
    def state_size(self) -> int:
        """Length of the flat state vector: H, or 2H (h then c) for an LSTM, H more (the
        accumulator) with an accumulating coordinator, F more (the last input) with motion
        features, and 1 more (the place in the pattern) for a random mask."""
        parts = 1 + (self.cell == "lstm") + self.coordinator_accumulate
        place = self.random_mask is not None
        return parts * self.hidden + self.n_features * self.coordinator_delta + place

    @cached_property
    def cost(self) -> CellCost:
        """Per-step multiply-add model of this cell (no coordinator unless selective)."""
        return CellCost(
            self.cell,
            self.n_features,
            self.hidden,
            self.selective,
            self.coordinator_energy,
            self.coordinator_accumulate,
            self.coordinator_delta,
        )

    def cost_summary(self) -> CostPerStep:
        """Dense and selective multiply-adds per step at the evaluated update rate."""
        cost = self.cost
        return CostPerStep(
            dense_macs=cost.dense_step,
            selective_macs=cost.per_step(self.evaluation.update_rate),
            gates_per_neuron=GATES_PER_CELL[self.cell],
        )
