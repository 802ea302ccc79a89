"""Transfer data: more text to distil on than the labelled rows, whose only labels are the teacher's targets.

Two sources, both turned into plain texts that :func:`slimformer.training.train_classifier` appends to the
training split with no hard label (the teacher's cached logits are their targets):

- the user's own unlabelled in-domain texts (`--unlabeled FILE`: production logs, one text a line, or a
  csv / json / jsonl / parquet file with a `text` column), read by :func:`read_unlabeled`;
- augmentations of the training texts made without any outside model (:func:`augment_texts`), word-level:
  `mask` (words replaced by the tokenizer's mask token), `delete` (words dropped), `swap` (two words swapped),
  `mix` (the first half of one utterance joined to the second half of another). Measured one by one in
  BENCHMARKS.md ("Students that keep accuracy").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from slimformer.errors import ConfigError, DataError

AUGMENTATIONS = ("mask", "delete", "swap", "mix")
WORD_RATE = 0.15  # share of the words `mask` and `delete` touch (at least one)


def _chosen(words: list[str], rng: random.Random) -> set[int]:
    count = max(1, round(WORD_RATE * len(words)))
    return set(rng.sample(range(len(words)), min(count, len(words))))


def mask_words(words: list[str], rng: random.Random, partner: list[str], mask_token: str) -> list[str]:
    chosen = _chosen(words, rng)
    return [mask_token if i in chosen else word for i, word in enumerate(words)]


def delete_words(words: list[str], rng: random.Random, partner: list[str], mask_token: str) -> list[str]:
    if len(words) < 2:
        return words
    chosen = _chosen(words, rng)
    kept = [word for i, word in enumerate(words) if i not in chosen]
    return kept or words[:1]


def swap_words(words: list[str], rng: random.Random, partner: list[str], mask_token: str) -> list[str]:
    if len(words) < 2:
        return words
    i, j = rng.sample(range(len(words)), 2)
    swapped = list(words)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def mix_utterances(words: list[str], rng: random.Random, partner: list[str], mask_token: str) -> list[str]:
    return words[: (len(words) + 1) // 2] + partner[len(partner) // 2 :]


AUGMENTERS: dict[str, Callable[[list[str], random.Random, list[str], str], list[str]]] = {
    "mask": mask_words,
    "delete": delete_words,
    "swap": swap_words,
    "mix": mix_utterances,
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
    texts: Sequence[str], methods: Sequence[str], copies: int = 1, seed: int = 0, mask_token: str = "[MASK]"
) -> list[str]:
    """`copies` new texts per training text and method, deterministic for a seed (so the teacher's logits over
    them are cached like any split's). Texts an augmentation leaves unchanged are dropped."""
    rng = random.Random(seed)
    split = [text.split() for text in texts]
    augmented: list[str] = []
    for method in parse_augmentations(list(methods)):
        augment = AUGMENTERS[method]
        for _ in range(copies):
            for words, text in zip(split, texts, strict=True):
                if not words:
                    continue
                new = " ".join(augment(words, rng, split[rng.randrange(len(split))], mask_token))
                if new != text:
                    augmented.append(new)
    return augmented


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
