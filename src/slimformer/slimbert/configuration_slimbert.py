"""SlimBERT: a BERT whose attention layers keep fewer heads than hidden_size / head_size.

transformers 5's BERT derives the head size as hidden_size / num_attention_heads, so a checkpoint whose
attention heads were removed (6 heads of 32 dims in a 384-wide MiniLM) cannot be described by a BertConfig.
`SlimBertConfig` adds one field, `attention_head_size`; everything else (weights' names, embeddings, FFN,
pooler, head) is BERT's own, so the model (`modeling_slimbert.py`) computes exactly what the pruned BERT
computed and exports to the same ONNX graph (ONNX Runtime fuses its attention like BERT's).

Both files import nothing but torch and transformers (and each other): `save_pretrained` copies them into the
checkpoint folder with an `auto_map`, so plain transformers loads the folder with
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``; slimformer registers
the classes itself and needs no remote code. The configuration stays apart from the model so that reading a
config or a tokenizer (an ONNX folder's, say) does not import BERT's modeling code.
"""

from __future__ import annotations

from transformers import BertConfig

MODEL_TYPE = "slimbert"


class SlimBertConfig(BertConfig):
    """A BertConfig whose attention heads are `attention_head_size` wide (None: hidden / heads, plain BERT)."""

    model_type = MODEL_TYPE

    def __init__(self, attention_head_size: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attention_head_size = attention_head_size or self.hidden_size // self.num_attention_heads
