"""Head-pruned checkpoints of every family but BERT: `slim-<model_type>` config and classifier classes, made
by one factory from the family's own classes and the layout table in `slimformer.families`.

The config adds `attention_head_size`; the classifier builds the family's model at full width (hidden /
head_size heads) and then keeps the first `num_attention_heads` heads of every layer with the very slicing
code structured pruning uses, so the module shapes match the saved weights and the forward pass is the
family's own. These classes live in slimformer (no `trust_remote_code` files): a `slim-*` folder loads with
`slimformer.models.load_classifier` once :func:`register_slim_families` has run.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from slimformer.families import FAMILIES, SLIM_PREFIX, Family, encoder_layers


@cache
def slim_config_class(family: Family) -> type:
    """The config class of the head-pruned form of `family` (imports no modeling code)."""
    from transformers import AutoConfig

    base_config = type(AutoConfig.for_model(family.name))

    def config_init(self: Any, attention_head_size: int | None = None, **kwargs: Any) -> None:
        base_config.__init__(self, **kwargs)
        self.attention_head_size = attention_head_size or self.hidden_size // self.num_attention_heads
        if family.head_size_config_field:  # e.g. ModernBERT's rotary embedding reads config.head_dim
            setattr(self, family.head_size_config_field, self.attention_head_size)

    stem = base_config.__name__.removesuffix("Config")
    return type(
        f"Slim{stem}Config",
        (base_config,),
        {"model_type": SLIM_PREFIX + family.name, "__init__": config_init, "__module__": __name__},
    )


@cache
def slim_classes(family: Family) -> tuple[type, type]:
    """(config class, sequence-classifier class) of the head-pruned form of `family`."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    config_class = slim_config_class(family)
    base_model = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[config_class.__mro__[1]]

    def model_init(self: Any, config: Any) -> None:
        heads, head_size = config.num_attention_heads, config.attention_head_size
        # the family's modules are built at their full width (hidden / head_size heads), then narrowed
        config.num_attention_heads = max(1, config.hidden_size // head_size)
        try:
            base_model.__init__(self, config)
        finally:
            config.num_attention_heads = heads
        _narrow_attention(self, family, heads, head_size)

    model_class = type(
        f"Slim{base_model.__name__}",
        (base_model,),
        {"config_class": config_class, "__init__": model_init, "__module__": __name__},
    )
    return config_class, model_class


def _narrow_attention(model: Any, family: Family, heads: int, head_size: int) -> None:
    import torch

    from slimformer.prune.slicing import slice_layer_heads, slice_shared_head_table

    full = model.config.hidden_size // head_size
    if heads >= full:
        return
    with torch.no_grad():
        if family.shared_head_table:
            slice_shared_head_table(model, family.shared_head_table, torch.arange(heads))
        for layer in encoder_layers(model):
            slice_layer_heads(layer, family, torch.arange(heads), head_size, full)


_REGISTERED: set[tuple[str, bool]] = set()


def register_slim_families(with_models: bool = True) -> None:
    """Make transformers' Auto classes know every `slim-<model_type>` config and, with `with_models`, its
    classifier (`with_models=False` imports no modeling code: enough for AutoConfig / AutoTokenizer).
    Idempotent."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    for family in FAMILIES:
        if family.name == "bert":
            continue  # BERT has SlimBERT
        config_class = slim_config_class(family)
        if (family.name, False) not in _REGISTERED:
            AutoConfig.register(config_class.model_type, config_class)
            _REGISTERED.add((family.name, False))
        if with_models and (family.name, True) not in _REGISTERED:
            AutoModelForSequenceClassification.register(config_class, slim_classes(family)[1])
            _REGISTERED.add((family.name, True))
