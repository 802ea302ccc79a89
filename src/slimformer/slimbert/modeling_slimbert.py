"""SlimBERT's model: BertForSequenceClassification whose attention layers keep fewer heads.

This file imports nothing but torch, transformers and its configuration file beside it: `save_pretrained`
copies both files into the checkpoint folder (see `configuration_slimbert.py`).
"""

from __future__ import annotations

from torch import nn
from transformers import BertForSequenceClassification

from .configuration_slimbert import SlimBertConfig


def set_attention_heads(attention: nn.Module, heads: int, head_size: int) -> None:
    """Record a new head count on a BertAttention module whose projections already have the new shapes."""
    self_attention = attention.self
    self_attention.num_attention_heads = heads
    self_attention.attention_head_size = head_size
    self_attention.all_head_size = heads * head_size
    self_attention.scaling = head_size**-0.5


class SlimBertForSequenceClassification(BertForSequenceClassification):
    """BertForSequenceClassification with `config.num_attention_heads` heads of `config.attention_head_size`."""

    config_class = SlimBertConfig

    def __init__(self, config: SlimBertConfig) -> None:
        heads, head_size = config.num_attention_heads, config.attention_head_size
        # BERT's modules are built at their full width (hidden / head_size heads), then the attention shrinks
        config.num_attention_heads = max(1, config.hidden_size // head_size)
        try:
            super().__init__(config)
        finally:
            config.num_attention_heads = heads
        width = heads * head_size
        for layer in self.bert.encoder.layer:
            attention = layer.attention
            for name in ("query", "key", "value"):
                setattr(attention.self, name, nn.Linear(config.hidden_size, width))
            attention.output.dense = nn.Linear(width, config.hidden_size)
            set_attention_heads(attention, heads, head_size)
            attention.apply(self._init_weights)
