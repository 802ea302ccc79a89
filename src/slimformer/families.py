"""Encoder families: everything that differs between BERT, DistilBERT, RoBERTa, ... kept in one table.

Each :class:`Family` names, for one architecture, where its layer stack lives, which config fields follow the
depth, the Linear layers of a layer's FFN and attention, the attribute names its attention module reads the
head count and head size from, and what ONNX Runtime's transformer optimizer can fuse for it. Distillation
(students from the teacher's layers), pruning (unstructured masks, FFN neurons, attention heads), the ORT
optimizer and :func:`preflight` all read this table instead of guessing from module names.

Design of head removal (why not one hand-written slim class per family). Every family's attention in
transformers 5 projects to `heads x head_size`, reshapes with ``view(..., -1, head_size)`` and merges heads
with ``reshape(..., -1)``: once the query/key/value rows and the output projection's columns of the removed
heads are sliced out and the module's head count attribute is updated, the unchanged forward computes the
smaller attention exactly. What no family's config can say is "fewer heads than hidden / head_size" (they
derive the head size from the head count). So a head-pruned model is saved under a slim model type (BERT:
the hand-written SlimBERT, kept for its `trust_remote_code` files; other families: ``slim-<model_type>``
classes made by one factory in :mod:`slimformer.slimmodels`): the config subclass adds `attention_head_size`,
the model subclass builds the family's own model at full width and then narrows every attention module with
the same slicing code pruning used (driven by this table). Adding a family is one table row, not a package,
and the forward pass always stays the family's own (its fused-attention export path included).
A family whose layers share one table indexed by head (MPNet's relative-position bias, `shared_head_table`)
has the same heads removed from every layer, ranked by their importance summed over the layers, and the
table's columns sliced to match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.errors import ModelError

STATIC_MODEL_TYPE = "static-embedding"  # slimformer.static_student: a token table and a head, no layers
SLIM_PREFIX = "slim-"  # model types of head-pruned checkpoints: slim-<family model type> (BERT: slimbert)
STAGES = (
    "finetune-teacher",
    "distill",
    "search",
    "static",
    "prune",
    "export",
    "optimize",
    "quantize",
    "benchmark-teacher",
    "benchmark-all",
    "report",
)


@dataclass(frozen=True)
class Family:
    """What one encoder architecture looks like to slimformer (paths are dotted module paths)."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values (incl. the head-pruned slim type)
    layers: str  # the ModuleList of encoder layers, from the classifier's root
    encoder: str  # the module whose Linear layers unstructured pruning masks
    ffn_in: str  # in a layer: the FFN's first Linear (its output rows are the neurons)
    ffn_out: str  # in a layer: the FFN's second Linear (its input columns are the neurons)
    ffn_size_field: str  # config field of the FFN width
    attention: str  # in a layer: the module holding the head count / head size attributes
    qkv: tuple[str, ...]  # in `attention`: query, key, value Linears (one fused Linear for ModernBERT)
    attention_out: str  # in a layer: the Linear merging the heads
    head_count_attr: str  # attribute of `attention` holding the head count
    head_size_attr: str  # attribute of `attention` holding the head size
    depth_fields: tuple[str, ...] = ("num_hidden_layers",)  # config fields equal to the depth
    per_layer_fields: tuple[str, ...] = ()  # config lists with one entry per layer
    ffn_chunks: int = 1  # gated FFNs (GLU) stack the value and gate rows: 2
    qkv_chunks: int = 1  # a fused query/key/value Linear stacks 3 blocks of rows
    extra_head_inputs: tuple[str, ...] = ()  # in `attention`: more Linears projecting per head, when present
    head_size_config_field: str | None = None  # a config field other code reads the head size from
    shared_layers: bool = False  # ALBERT: one layer's weights repeated over the depth
    shared_head_table: str | None = None  # from the classifier's root: an Embedding with a column per head that
    # every layer reads (MPNet's relative-position bias): the same heads go from every layer, columns sliced
    ort_model_type: str = "bert"  # onnxruntime.transformers.optimizer model type
    attention_fusion: str | None = None  # None: ORT fuses the attention; else why it does not
    embedding_fusion: str | None = None  # None: ORT fuses EmbedLayerNormalization; else why it does not

    def config_depth(self, config: Any) -> int:
        return int(getattr(config, self.depth_fields[0]))


BERT_ATTENTION = {
    "attention": "attention.self",
    "qkv": ("query", "key", "value"),
    "attention_out": "attention.output.dense",
    "head_count_attr": "num_attention_heads",
    "head_size_attr": "attention_head_size",
}
BERT_FFN = {"ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_size_field": "intermediate_size"}
ROBERTA_EMBEDDINGS = (
    "not fused: the tokenizer gives no token_type_ids, so transformers' RoBERTa embeds a zeros buffer through "
    "Expand/GatherElements, which onnxruntime's EmbedLayerNormalization pattern does not match (its RoBERTa "
    "position-id pattern does); exporting with a token_type_ids input would let it fuse"
)
UNMATCHED_EMBEDDINGS = "not fused: onnxruntime's EmbedLayerNormalization pattern does not match {}"


def _bert_like(name: str, prefix: str, **overrides: Any) -> Family:
    fields: dict[str, Any] = {
        "name": name,
        "model_types": (name, SLIM_PREFIX + name),
        "layers": f"{prefix}.encoder.layer",
        "encoder": f"{prefix}.encoder",
        **BERT_FFN,
        **BERT_ATTENTION,
    }
    fields.update(overrides)
    return Family(**fields)


FAMILIES: tuple[Family, ...] = (
    _bert_like("bert", "bert", model_types=("bert", "slimbert")),
    _bert_like("roberta", "roberta", embedding_fusion=ROBERTA_EMBEDDINGS),
    _bert_like("xlm-roberta", "roberta", embedding_fusion=ROBERTA_EMBEDDINGS),
    _bert_like("camembert", "roberta", embedding_fusion=ROBERTA_EMBEDDINGS),
    _bert_like("electra", "electra"),
    Family(
        name="distilbert",
        model_types=("distilbert", SLIM_PREFIX + "distilbert"),
        layers="distilbert.transformer.layer",
        encoder="distilbert.transformer",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        ffn_size_field="hidden_dim",
        attention="attention",
        qkv=("q_lin", "k_lin", "v_lin"),
        attention_out="attention.out_lin",
        head_count_attr="n_heads",
        head_size_attr="attention_head_size",
        depth_fields=("n_layers",),
    ),
    _bert_like(
        "mpnet",
        "mpnet",
        attention="attention.attn",
        qkv=("q", "k", "v"),
        attention_out="attention.attn.o",
        shared_head_table="mpnet.encoder.relative_attention_bias",
        attention_fusion=(
            "not available in onnxruntime for mpnet: its attention adds a relative-position bias, which the "
            "BERT Attention pattern does not match; optimize's --biased-attention rewrite fuses it"
        ),
        embedding_fusion=UNMATCHED_EMBEDDINGS.format("MPNet's embeddings (no token types, RoBERTa-style positions)"),
    ),
    _bert_like(
        "deberta-v2",
        "deberta",
        attention="attention.self",
        qkv=("query_proj", "key_proj", "value_proj"),
        extra_head_inputs=("pos_key_proj", "pos_query_proj"),
        attention_fusion=(
            "not available in onnxruntime for deberta-v2: its disentangled attention (content-to-position "
            "and position-to-content terms over relative embeddings) has no fused Attention op"
        ),
        embedding_fusion=UNMATCHED_EMBEDDINGS.format("DeBERTa-v3's embeddings (no absolute positions)"),
    ),
    Family(
        name="albert",
        model_types=("albert", SLIM_PREFIX + "albert"),
        layers="albert.encoder.albert_layer_groups.0.albert_layers",
        encoder="albert.encoder",
        ffn_in="ffn",
        ffn_out="ffn_output",
        ffn_size_field="intermediate_size",
        attention="attention",
        qkv=("query", "key", "value"),
        attention_out="attention.dense",
        head_count_attr="num_attention_heads",
        head_size_attr="attention_head_size",
        shared_layers=True,
        embedding_fusion=UNMATCHED_EMBEDDINGS.format("ALBERT's factorized embeddings"),
    ),
    Family(
        name="modernbert",
        model_types=("modernbert", SLIM_PREFIX + "modernbert"),
        layers="model.layers",
        encoder="model.layers",
        ffn_in="mlp.Wi",
        ffn_out="mlp.Wo",
        ffn_size_field="intermediate_size",
        ffn_chunks=2,
        attention="attn",
        qkv=("Wqkv",),
        qkv_chunks=3,
        attention_out="attn.Wo",
        head_count_attr="",  # ModernBERT's attention infers the head count from Wqkv's width
        head_size_attr="head_dim",
        head_size_config_field="head_dim",  # the rotary embedding's width
        per_layer_fields=("layer_types",),
        attention_fusion=(
            "not available in onnxruntime for modernbert: rotary position embeddings and sliding-window "
            "layers are outside the BERT Attention pattern (the graph runs unfused MatMul/Softmax attention)"
        ),
        embedding_fusion=UNMATCHED_EMBEDDINGS.format("ModernBERT's embeddings (no positions: rotary; no token types)"),
    ),
)
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def supported_model_types() -> list[str]:
    return [family.name for family in FAMILIES]


def family_for_model_type(model_type: str | None) -> Family:
    """The family of a config.json `model_type`; ModelError naming the supported families otherwise."""
    family = _BY_MODEL_TYPE.get(str(model_type))
    if family is None:
        raise ModelError(
            f"model type {model_type!r} is not a supported encoder family; "
            f"supported: {', '.join(supported_model_types())}"
        )
    return family


def family_of(model: Any) -> Family:
    """The family of a loaded transformers model."""
    return family_for_model_type(getattr(model.config, "model_type", None))


def submodule(root: Any, path: str) -> Any:
    """`root.a.b.0.c` for path "a.b.0.c" (ModuleLists are indexed by their digits)."""
    for part in path.split(".") if path else ():
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def encoder_layers(model: Any) -> list[Any]:
    """The distinct encoder layers of a loaded model (ALBERT: its one shared layer)."""
    return list(submodule(model, family_of(model).layers))


def model_type_of(model_dir: str | Path) -> str | None:
    """The `model_type` in a folder's config.json (None when unreadable: the stage itself reports it)."""
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def preflight(model_dir: Path, stage: str, config: Any) -> str | None:
    """A one-line reason why `stage` cannot run on the model in `model_dir` with `config` (that stage's
    config dataclass), or None when it can. Only the family decides here; the stage validates the rest."""
    model_type = model_type_of(model_dir)
    if model_type is None:
        return None  # no readable config.json: the stage's own loading gives the precise error
    if model_type == STATIC_MODEL_TYPE:
        if stage in ("export", "quantize"):
            return None
        return f"a static student (no encoder layers) cannot go through {stage}: export and quantize it"
    family = _BY_MODEL_TYPE.get(str(model_type))
    if family is None:
        return (
            f"model type {model_type!r} is not a supported encoder family "
            f"(supported: {', '.join(supported_model_types())})"
        )
    method = getattr(config, "method", None) if stage == "prune" else None
    if method == "vocab" and getattr(config, "vocab_unseen", "cluster") == "split":
        tokenizer_type = _tokenizer_model_type(Path(model_dir))
        if tokenizer_type not in (None, "WordPiece"):
            return (
                f"--vocab-unseen split rebuilds WordPiece tokenizers only; this one is {tokenizer_type} "
                "(use --vocab-unseen cluster)"
            )
    return None


def _tokenizer_model_type(model_dir: Path) -> str | None:
    try:
        return json.loads((model_dir / "tokenizer.json").read_text())["model"]["type"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
