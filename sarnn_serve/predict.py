"""Stateless prediction: whole sequences run from a zero state, batched together through the
model's micro-batcher; nothing is stored."""

import asyncio

import numpy as np

from sarnn_serve.accounting import usage
from sarnn_serve.batcher import MicroBatcher
from sarnn_serve.card import ModelCard
from sarnn_serve.errors import InvalidInput, PayloadTooLarge
from sarnn_serve.results import PredictResult, StepOutputs
from sarnn_serve.schemas import PredictRequest
from sarnn_serve.settings import Settings
from sarnn_serve.thresholds import prior_rate
from sarnn_serve.validation import out_of_range, parse_inputs


async def run_sequences(
    card: ModelCard, batcher: MicroBatcher, settings: Settings, request: PredictRequest
) -> PredictResult:
    """Each sequence of the request from a zero state, at the request's threshold (the card's
    by default). Every sequence is checked before their count: a malformed request is 422 at
    any size."""
    if not request.inputs:
        raise InvalidInput("inputs", "must hold at least one sequence")
    xs = [
        parse_inputs(seq, card.n_features, settings.max_chunk_steps, f"inputs[{i}]")
        for i, seq in enumerate(request.inputs)
    ]
    if len(xs) > settings.max_predict_sequences:
        raise PayloadTooLarge(
            f"inputs: {len(xs)} sequences exceed the limit of {settings.max_predict_sequences}",
            field="inputs",
        )
    tau = request.threshold if request.threshold is not None else card.threshold
    zero = np.zeros(card.state_size, np.float32)
    prior = prior_rate(card)
    results = await asyncio.gather(*(batcher.run(x, zero, tau, prior) for x in xs))
    sequences = []
    for i, r in enumerate(results):
        if not r.finite:
            raise out_of_range(f"inputs[{i}]")
        outputs = StepOutputs.from_graph(0, r.logits, r.updates, request.include_mask, r.counts)
        sequences.append((outputs, outputs.usage(card)))
    total = usage(
        card.cost,
        sum(used.steps for _, used in sequences),
        sum(used.updates for _, used in sequences),
    )
    return PredictResult(card.name, card.class_labels, sequences, total, request.include_steps)
