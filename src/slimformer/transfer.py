"""Transfer data: more text to distil on than the labelled rows, whose only labels are the teacher's targets.

Two sources, both turned into plain texts that :func:`slimformer.training.train_classifier` appends to the
training split with no hard label (the teacher's cached logits are their targets):

- the user's own unlabelled in-domain texts (`--unlabeled FILE`: production logs, one text a line, or a
  csv / json / jsonl / parquet file with a `text` column), read by :func:`read_unlabeled`;
- augmentations of the training texts made without any outside model (:func:`augment_texts`), word-level:
  `mask` (words replaced by the tokenizer's mask token), `delete` (words dropped), `swap` (two words swapped),
  `mix` (the first half of one utterance joined to the second half of another), `replace` (words replaced by
  one of their nearest words in the model's own input-embedding table, :func:`word_neighbours`: TinyBERT's
  word replacement with the model's table standing in for GloVe). Measured one by one in BENCHMARKS.md
  ("Students that keep accuracy").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimformer.errors import ConfigError, DataError

AUGMENTATIONS = ("mask", "delete", "swap", "mix", "mix-near", "replace")
NEAR = "mix-near"  # a mixed utterance whose second half comes from the intent the teacher ranks next
WORD_RATE = 0.15  # share of the words `mask`, `delete` and `replace` touch (at least one)
NEIGHBOURS = 8  # `replace` draws from a word's 8 nearest words


@dataclass(frozen=True)
class AugmentContext:
    """What an augmentation may use besides the words: another utterance, the mask token, word neighbours."""

    partner: list[str]
    mask_token: str = "[MASK]"
    neighbours: Mapping[str, Sequence[str]] = field(default_factory=dict)


def _chosen(words: list[str], rng: random.Random) -> set[int]:
    count = max(1, round(WORD_RATE * len(words)))
    return set(rng.sample(range(len(words)), min(count, len(words))))


def mask_words(words: list[str], rng: random.Random, context: AugmentContext) -> list[str]:
    chosen = _chosen(words, rng)
    return [context.mask_token if i in chosen else word for i, word in enumerate(words)]


def delete_words(words: list[str], rng: random.Random, context: AugmentContext) -> list[str]:
    if len(words) < 2:
        return words
    chosen = _chosen(words, rng)
    kept = [word for i, word in enumerate(words) if i not in chosen]
    return kept or words[:1]


def swap_words(words: list[str], rng: random.Random, context: AugmentContext) -> list[str]:
    if len(words) < 2:
        return words
    i, j = rng.sample(range(len(words)), 2)
    swapped = list(words)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def mix_utterances(words: list[str], rng: random.Random, context: AugmentContext) -> list[str]:
    return words[: (len(words) + 1) // 2] + context.partner[len(context.partner) // 2 :]


def replace_words(words: list[str], rng: random.Random, context: AugmentContext) -> list[str]:
    chosen = _chosen(words, rng)
    replaced = []
    for i, word in enumerate(words):
        options = context.neighbours.get(word.lower()) if i in chosen else None
        replaced.append(rng.choice(options) if options else word)
    return replaced


AUGMENTERS: dict[str, Callable[[list[str], random.Random, AugmentContext], list[str]]] = {
    "mask": mask_words,
    "delete": delete_words,
    "swap": swap_words,
    "mix": mix_utterances,
    NEAR: mix_utterances,  # the same cut; its partner is drawn from `near` (augment_texts)
    "replace": replace_words,
}


def parse_augmentations(value: str | Sequence[str] | None) -> list[str]:
    """The methods named in a comma list ("mask,mix"); ConfigError for an unknown one."""
    if not value:
        return []
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [name for name in names if name not in AUGMENTERS]
    if unknown:
        raise ConfigError(f"unknown augmentation {unknown[0]!r}; use any of {', '.join(AUGMENTATIONS)}")
    return [name for name in names if name]


def augment_texts(
    texts: Sequence[str],
    methods: Sequence[str],
    copies: int = 1,
    seed: int = 0,
    mask_token: str = "[MASK]",
    neighbours: Mapping[str, Sequence[str]] | None = None,
    near: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """`copies` new texts per training text and method, deterministic for a seed (so the teacher's logits over
    them are cached like any split's). Texts an augmentation leaves unchanged are dropped. `replace` needs
    `neighbours` (:func:`word_neighbours`); `mix-near` needs `near`: for each text, the indices of the texts its
    partner is drawn from (:func:`runner_up_partners`; a text with none gets a random partner)."""
    methods = parse_augmentations(list(methods))
    if "replace" in methods and neighbours is None:
        raise ConfigError("the 'replace' augmentation needs word neighbours from a model's embedding table")
    if NEAR in methods and (near is None or len(near) != len(texts)):
        raise ConfigError("the 'mix-near' augmentation needs each text's nearest intent, from the teacher")
    rng = random.Random(seed)
    split = [text.split() for text in texts]
    augmented: list[str] = []
    for method in methods:
        augment = AUGMENTERS[method]
        for _ in range(copies):
            for index, (words, text) in enumerate(zip(split, texts, strict=True)):
                if not words:
                    continue
                pool = near[index] if method == NEAR and near is not None else ()
                partner = split[rng.choice(pool)] if pool else split[rng.randrange(len(split))]
                context = AugmentContext(partner, mask_token, neighbours or {})
                new = " ".join(augment(words, rng, context))
                if new != text:
                    augmented.append(new)
    return augmented


def runner_up_partners(labels: Sequence[int], logits: Any) -> list[list[int]]:
    """For each training text, the indices of the training texts whose label is the one the teacher ranks
    next after the text's own (`logits`: rows in text order, columns in the label ids' order): `mix-near`
    draws its partners there, so its mixed utterances fall between intents the teacher finds close."""
    import numpy as np

    labels = np.asarray(labels)
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        by_label.setdefault(label, []).append(index)
    scores = np.array(logits, dtype=np.float64, copy=True)
    scores[np.arange(len(labels)), labels] = -np.inf
    return [by_label.get(int(runner_up), []) for runner_up in scores.argmax(axis=1)]


def teacher_runner_ups(
    teacher: str | Path, splits: Any, max_length: int | None = None, cache_dir: str | None = None
) -> list[list[int]]:
    """:func:`runner_up_partners` of the training split, from the teacher's logits over it (cached) in the
    split's label order."""
    from slimformer.data import column
    from slimformer.distillation import ordered_teacher_logits
    from slimformer.models import DEFAULT_MAX_LENGTH

    logits, _ = ordered_teacher_logits(
        teacher, splits.train, splits.labels, max_length or DEFAULT_MAX_LENGTH, cache_dir
    )
    return runner_up_partners(column(splits.train, "label"), logits)


def near_partners(
    methods: str | Sequence[str], teacher: str | Path, splits: Any, max_length: int | None, cache_dir: str | None
) -> list[list[int]] | None:
    """`mix-near`'s partners (:func:`teacher_runner_ups`) when `methods` name it, else None."""
    return teacher_runner_ups(teacher, splits, max_length, cache_dir) if NEAR in parse_augmentations(methods) else None


def augment_for_model(
    texts: Sequence[str],
    methods: str | Sequence[str],
    copies: int,
    seed: int,
    tokenizer: Any,
    table: Any,
    near: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """:func:`augment_texts` with the tokenizer's mask token and, for `replace`, the nearest words of the
    model's input-embedding `table` (one row per token id of `tokenizer`)."""
    methods = parse_augmentations(methods)
    mask_token = getattr(tokenizer, "mask_token", None) or "[MASK]"
    neighbours = word_neighbours(tokenizer, table, texts) if "replace" in methods else None
    return augment_texts(texts, methods, copies, seed, mask_token, neighbours, near)


def word_neighbours(tokenizer: Any, table: Any, texts: Sequence[str], count: int = NEIGHBOURS) -> dict[str, list[str]]:
    """For each word of `texts` that is one whole token of the vocabulary, its `count` nearest whole-word tokens
    by cosine similarity of the input-embedding `table` (a torch tensor, one row per token id). Whole words are
    alphabetic tokens that are not continuation pieces (`##x`), special tokens or BERT's `[unusedN]`."""
    import torch

    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    words = sorted({token for token in vocab if token.isalpha() and token not in special})
    if not words:
        return {}
    word_ids = torch.tensor([vocab[word] for word in words])
    rows = torch.nn.functional.normalize(table.detach().float()[word_ids], dim=1)
    index = {word: i for i, word in enumerate(words)}
    asked = sorted({word.lower() for text in texts for word in text.split()} & index.keys())
    if not asked:
        return {}
    neighbours = {}
    for start in range(0, len(asked), 1024):  # 1,024 words x the vocabulary at a time
        chunk = asked[start : start + 1024]
        chunk_rows = torch.tensor([index[word] for word in chunk])
        similarity = rows[chunk_rows] @ rows.T
        similarity[torch.arange(len(chunk)), chunk_rows] = -2.0  # never the word itself
        nearest = similarity.topk(min(count, len(words) - 1), dim=1).indices.tolist()
        neighbours.update({word: [words[j] for j in row] for word, row in zip(chunk, nearest, strict=True)})
    return neighbours


def read_unlabeled(path: str | Path) -> list[str]:
    """The texts of an unlabelled file: one a line (.txt or any other suffix), or the `text` column of a csv,
    json, jsonl or parquet file. DataError in one line when it is missing, unreadable or empty."""
    from slimformer.data import FILE_FORMATS, column, read_table

    path = Path(path)
    if not path.is_file():
        raise DataError(f"unlabelled texts {path}: no such file")
    if path.suffix.lower() in FILE_FORMATS:
        rows = read_table(path)
        if "text" not in rows.column_names:
            raise DataError(f"{path} has no column 'text' (columns: {', '.join(rows.column_names)})")
        texts = [str(text).strip() for text in column(rows, "text") if text is not None]
    else:
        try:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
    texts = [text for text in texts if text]
    if not texts:
        raise DataError(f"{path} holds no texts")
    return texts
