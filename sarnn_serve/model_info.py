"""What GET /v1/models says of a served model: its card, state size, cost per step and whether
it is the default model."""

from sarnn_serve.registry import Registry


def describe(registry: Registry, name: str, default: str | None) -> dict:
    """A model's card with its state size, cost per step and whether it is `default`."""
    card = registry.get(name).card
    return {
        **card.model_dump(),
        "state_size": card.state_size,
        "cost_per_step": card.cost_summary().model_dump(),
        "default": name == default,
    }


def describe_all(registry: Registry, default: str | None) -> list[dict]:
    """Every served model's description."""
    return [describe(registry, name, default) for name in registry.names()]
