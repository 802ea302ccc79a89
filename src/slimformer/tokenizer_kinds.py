"""Random models of each encoder family without the hub: a tokenizer of the family's kind trained in
milliseconds on a few texts, and the config settings that make a family's model what it is (DeBERTa-v3's
relative attention, ModernBERT's local attention, ...). Latency and size do not depend on the weights or the
vocabulary's contents, so such models at real sizes measure speed; the family tests and
`benchmarks/families.py` build theirs here."""

from __future__ import annotations

from typing import Any

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
DEBERTA_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
ALBERT_SPECIALS = ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")
# family -> (tokenizer kind, special tokens, how pairs are joined)
FAMILY_TOKENIZERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "bert": ("wordpiece", WORDPIECE_SPECIALS, "bert"),
    "distilbert": ("wordpiece", WORDPIECE_SPECIALS, "bert"),
    "electra": ("wordpiece", WORDPIECE_SPECIALS, "bert"),
    "mpnet": ("wordpiece", ROBERTA_SPECIALS, "roberta"),
    "roberta": ("bpe", ROBERTA_SPECIALS, "roberta"),
    "modernbert": ("bpe", WORDPIECE_SPECIALS, "bert"),
    "xlm-roberta": ("unigram", ROBERTA_SPECIALS, "roberta"),
    "deberta-v2": ("unigram", DEBERTA_SPECIALS, "bert"),
    "albert": ("unigram", ALBERT_SPECIALS, "bert"),
}


def train_tokenizer(kind: str, specials: tuple[str, ...], pair_style: str, texts: list[str]) -> Any:
    """A fast tokenizer of `kind` (wordpiece, bpe: byte-level BPE, unigram) trained on `texts`, with `specials`
    and `pair_style`'s template ("bert": [CLS] A [SEP]; "roberta": <s> A </s>)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    unk = next(s for s in specials if "unk" in s.lower())
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token=unk))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=list(specials))
    elif kind == "bpe":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), initial_alphabet=alphabet)
    else:
        backend = Tokenizer(models.Unigram())
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=list(specials), unk_token=unk)
    backend.train_from_iterator(texts, trainer)
    if pair_style == "roberta":
        cls, sep, pad, mask = "<s>", "</s>", "<pad>", "<mask>"
    else:
        cls, sep, pad, mask = "[CLS]", "[SEP]", specials[0], "[MASK]"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, pad_token=pad, cls_token=cls, sep_token=sep, mask_token=mask
    )
    tokenizer.model_max_length = 64
    return tokenizer


def vocabulary_settings(tokenizer: Any, labels: list[str]) -> dict[str, Any]:
    """Config settings that follow the tokenizer and the labels: vocabulary size, special token ids, the label
    maps numbered in dataset order."""
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def family_settings(family: str, tokenizer: Any, embedding_size: int) -> dict[str, Any]:
    """Config settings particular to `family` beyond the shape (`embedding_size`: ELECTRA's and ALBERT's
    factorised embeddings), for `transformers.AutoConfig.for_model(family, **shape, **settings)`."""
    if family == "electra":
        return {"embedding_size": embedding_size}
    if family == "albert":
        return {"embedding_size": embedding_size, "num_hidden_groups": 1, "inner_group_num": 1}
    if family == "deberta-v2":  # DeBERTa-v3's relative attention, no absolute positions
        return {
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False,
            "position_buckets": 32,
            "max_relative_positions": -1,
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
            "type_vocab_size": 0,
        }
    if family == "modernbert":
        return {
            "global_attn_every_n_layers": 3,
            "local_attention": 16,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        }
    return {}
