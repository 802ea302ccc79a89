"""The static student as a transformers model (`static-embedding`): a token table, a masked mean, a linear head.

Registered with transformers' Auto classes by :func:`slimformer.models.register_model_types`, so the folder loads
with `load_classifier` and exports to ONNX through `slimformer export` like every other classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from slimformer.families import STATIC_MODEL_TYPE as MODEL_TYPE


class StaticEmbeddingConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 256, **kwargs: Any) -> None:
        kwargs.setdefault("architectures", ["StaticEmbeddingForSequenceClassification"])
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = 0
        self.max_position_embeddings = 512  # no positions: the tokenizer's own limit applies


class StaticEmbeddingForSequenceClassification(PreTrainedModel):
    """logits = W · mean(table[token] for the text's real tokens) + b."""

    config_class = StaticEmbeddingConfig
    base_model_prefix = "static"
    main_input_name = "input_ids"

    def __init__(self, config: StaticEmbeddingConfig) -> None:
        super().__init__(config)
        self.embeddings = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.unsqueeze(-1).to(self.embeddings.weight.dtype)
        pooled = (self.embeddings(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(pooled)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
