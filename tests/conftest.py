"""Shared fixtures: a real CLINC150 slice and tiny random BERT models built here (no hub).

Session fixtures build each thing once; tests that change a model get a fresh copy of its folder.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

SHARED_CLINC = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150"
SLICE_INTENTS = ("oos", "balance", "book_flight", "translate", "weather", "alarm")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def clinc_dir() -> Path:
    from slimformer.data import default_clinc_dir

    folder = default_clinc_dir() or SHARED_CLINC
    if not (folder / "data_oos_plus.json").is_file():
        pytest.skip("CLINC150 data folder not available")
    return folder


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


@pytest.fixture(scope="session")
def clinc_slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real slice of CLINC150 (plus): 6 intents incl. oos, 24/8/8 rows each, as train/validation/test csv."""
    raw = json.loads((clinc_dir() / "data_oos_plus.json").read_text())
    folder = tmp_path_factory.mktemp("clinc_slice")
    for split, keys, per_intent in (
        ("train", ("train", "oos_train"), 24),
        ("validation", ("val", "oos_val"), 8),
        ("test", ("test", "oos_test"), 8),
    ):
        rows = [pair for key in keys for pair in raw[key]]
        kept = []
        for intent in SLICE_INTENTS:
            kept += [(text, label) for text, label in rows if label == intent][:per_intent]
        _write_csv(folder / f"{split}.csv", kept)
    return folder


@pytest.fixture(scope="session")
def clinc_slice(clinc_slice_dir: Path):
    from slimformer.data import load_data

    return load_data(str(clinc_slice_dir))


def build_tokenizer(folder: Path, texts: list[str]):
    """A WordPiece tokenizer whose vocabulary is the words of `texts` plus single characters."""
    from transformers import BertTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars] + [w for w in words if w not in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores `vocab_file=` here: pass the vocabulary itself
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_bert(folder: Path, texts: list[str], labels: list[str] | None, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random BERT (hidden 32) with a tokenizer to `folder`; a classifier when labels are given."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(folder, texts)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    if labels is None:
        model = BertModel(config)
    else:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    """A tiny random BERT classifier over the CLINC slice's labels (read-only: copy it to change it)."""
    from slimformer.data import column

    texts = (
        column(clinc_slice.train, "text") + column(clinc_slice.test, "text") + column(clinc_slice.validation, "text")
    )
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_classifier"), texts, clinc_slice.labels)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    """A tiny random BERT body without a classification head (a 'base' model)."""
    from slimformer.data import column

    texts = (
        column(clinc_slice.train, "text") + column(clinc_slice.test, "text") + column(clinc_slice.validation, "text")
    )
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_base"), texts, None)


@pytest.fixture()
def private_cache_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private teacher-logit cache, no progress bars, and one torch thread (tiny models gain nothing from
    threads, and the CPU is shared)."""
    import torch

    monkeypatch.setenv("SLIMFORMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SLIMFORMER_NO_PROGRESS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_classifier(tiny_classifier_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny classifier folder, free to modify."""
    return Path(shutil.copytree(tiny_classifier_dir, tmp_path / "tiny_classifier"))
