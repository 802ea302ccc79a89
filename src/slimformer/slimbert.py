"""SlimBERT: a BERT whose attention layers keep fewer heads than hidden_size / head_size.

transformers 5's BERT derives the head size as hidden_size / num_attention_heads, so a checkpoint whose
attention heads were removed (6 heads of 32 dims in a 384-wide MiniLM) cannot be described by a BertConfig.
`SlimBertConfig` adds one field, `attention_head_size`; everything else (weights' names, embeddings, FFN,
pooler, head) is BERT's own, so the model computes exactly what the pruned BERT computed and exports to the
same ONNX graph (ONNX Runtime fuses its attention like BERT's).

This file imports nothing but torch and transformers: `save_pretrained` copies it into the checkpoint folder
with an `auto_map`, so plain transformers loads the folder with
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``; slimformer registers
the classes itself and needs no remote code.
"""

from __future__ import annotations

from torch import nn
from transformers import BertConfig, BertForSequenceClassification

MODEL_TYPE = "slimbert"


class SlimBertConfig(BertConfig):
    """A BertConfig whose attention heads are `attention_head_size` wide (None: hidden / heads, plain BERT)."""

    model_type = MODEL_TYPE

    def __init__(self, attention_head_size: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attention_head_size = attention_head_size or self.hidden_size // self.num_attention_heads


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
