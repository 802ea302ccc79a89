"""Data loading: CLINC150 from the oos-eval JSON files, local datasets, and every bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from slimformer.data import column, load_data
from slimformer.errors import DataError
from slimformer.metrics import classification_metrics
from tests.conftest import clinc_dir


def test_clinc150_plus_has_151_labels_and_book_split_sizes():
    splits = load_data("clinc150", data_dir=clinc_dir())
    assert splits.name == "clinc150:plus"
    assert splits.num_labels == 151
    assert "oos" in splits.labels
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (15250, 3100, 5500)
    assert splits.labels[splits.oos_label_id] == "oos"
    assert sum(1 for label in column(splits.test, "label") if label == splits.oos_label_id) == 1000


@pytest.mark.parametrize(("config", "train_rows"), [("full", 15100), ("small", 7600)])
def test_clinc150_other_configs(config, train_rows):
    splits = load_data(f"clinc150:{config}", data_dir=clinc_dir())
    assert len(splits.train) == train_rows
    assert splits.num_labels == 151


def test_clinc150_env_var_is_used(monkeypatch):
    monkeypatch.setenv("SLIMFORMER_DATA_DIR", str(clinc_dir()))
    assert load_data("clinc150:small").num_labels == 151


def test_clinc150_unknown_config_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="unknown clinc150 config 'nope'"):
        load_data("clinc150:nope", data_dir=clinc_dir())
    with pytest.raises(DataError, match="CLINC150 file not found"):
        load_data("clinc150", data_dir=tmp_path)


def test_fingerprint_is_stable_and_tracks_content(clinc_slice_dir, tmp_path):
    first = load_data(str(clinc_slice_dir))
    assert load_data(str(clinc_slice_dir)).fingerprint == first.fingerprint
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("train.csv", "validation.csv", "test.csv"):
        (changed / name).write_text((clinc_slice_dir / name).read_text())
    with (changed / "train.csv").open("a") as handle:
        handle.write("one more weather question,weather\n")
    assert load_data(str(changed)).fingerprint != first.fingerprint


def test_local_folder_with_csv_splits(clinc_slice):
    assert clinc_slice.labels == sorted(["oos", "balance", "book_flight", "translate", "weather", "alarm"])
    assert (len(clinc_slice.train), len(clinc_slice.validation), len(clinc_slice.test)) == (144, 48, 48)
    assert clinc_slice.oos_label_id == clinc_slice.labels.index("oos")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_single_jsonl_file_split_with_seed_and_custom_columns(tmp_path):
    rows = [{"utterance": f"query number {i}", "intent": ["a", "b", "c"][i % 3]} for i in range(60)]
    path = tmp_path / "all.jsonl"
    _write_jsonl(path, rows)
    splits = load_data(str(path), text_column="utterance", label_column="intent", seed=1)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 60
    assert (len(splits.validation), len(splits.test)) == (6, 6)
    assert splits.labels == ["a", "b", "c"]
    again = load_data(str(path), text_column="utterance", label_column="intent", seed=1)
    assert column(again.test, "text") == column(splits.test, "text")


def test_folder_without_validation_carves_it_from_train(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(50)])
    _write_jsonl(tmp_path / "test.jsonl", [{"text": f"x {i}", "label": i % 2} for i in range(10)])
    splits = load_data(str(tmp_path))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (45, 5, 10)
    assert splits.labels == ["0", "1"]


def test_carved_validation_keeps_each_label_in_proportion(tmp_path):
    # 90 rows of "common", 10 of "rare": a stratified 10 % holds 9 and 1, and "rare" keeps 9 training rows
    rows = [{"text": f"t {i}", "label": "common" if i < 90 else "rare"} for i in range(100)]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    _write_jsonl(tmp_path / "test.jsonl", rows[:2] + rows[-2:])
    for seed in (0, 1, 2):
        splits = load_data(str(tmp_path), seed=seed)
        held = Counter(splits.labels[i] for i in column(splits.validation, "label"))
        assert held == {"common": 9, "rare": 1}


@pytest.mark.parametrize(
    ("name", "found"), [("out_of_scope", True), ("Out-Of-Scope", True), ("OOS", True), ("scope", False)]
)
def test_out_of_scope_label_found_by_its_usual_names(tmp_path, name, found):
    rows = [{"text": f"t {i}", "label": ["greet", name][i % 2]} for i in range(20)]
    for split in ("train", "validation", "test"):
        _write_jsonl(tmp_path / f"{split}.jsonl", rows)
    splits = load_data(str(tmp_path))
    metrics = classification_metrics([0, 1, 1, 0], [0, 1, 0, 1], splits.oos_label_id)
    if found:
        assert splits.labels[splits.oos_label_id] == name
        assert (metrics["in_scope_accuracy"], metrics["oos_recall"]) == (0.5, 0.5)
    else:
        assert splits.oos_label_id is None and "oos_recall" not in metrics


def test_parquet_folder(tmp_path):
    import datasets

    for split in ("train", "validation", "test"):
        datasets.Dataset.from_dict({"text": ["hi there", "bye now"], "label": ["greet", "leave"]}).to_parquet(
            str(tmp_path / f"{split}.parquet")
        )
    assert load_data(str(tmp_path)).labels == ["greet", "leave"]


@pytest.mark.parametrize(
    ("files", "kwargs", "message"),
    [
        ({}, {}, "no train file"),
        ({"train.csv": "text,label\nhello,a\nbye,b\n"}, {}, "no test file"),
        (
            {"train.csv": "text,label\nhello,a\nbye,b\n", "test.csv": "text,label\nhi,a\n"},
            {"text_column": "utterance"},
            "has no column 'utterance'",
        ),
        (
            {
                "train.csv": "text,label\nhello,a\nbye,b\n",
                "validation.csv": "text,label\n",
                "test.csv": "text,label\nhi,a\n",
            },
            {},
            "validation.csv is empty",
        ),
        (
            {"train.csv": 'text,label\nhello,a\n"",b\n"  ",a\nok,b\n', "test.csv": "text,label\nhi,a\n"},
            {},
            "has 2 empty text row",
        ),
        (
            {
                "train.csv": "text,label\nhello,a\nbye,b\n",
                "validation.csv": "text,label\nhey,b\n",
                "test.csv": "text,label\nhi,a\nyo,zzz\n",
            },
            {},
            "test split of .* has 1 row.* unknown to train: 'zzz'",
        ),
    ],
)
def test_bad_local_datasets_raise_one_line_errors(tmp_path, files, kwargs, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        load_data(str(tmp_path), **kwargs)
    assert "\n" not in str(caught.value)


def test_missing_path_and_unsupported_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "nope"))
    bad = tmp_path / "data.txt"
    bad.write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_data(str(bad))


def test_subset_is_smaller_and_keeps_labels(clinc_slice):
    small = clinc_slice.subset(max_train=10, max_eval=5)
    assert (len(small.train), len(small.validation), len(small.test)) == (10, 5, 5)
    assert small.labels == clinc_slice.labels
    assert small.fingerprint != clinc_slice.fingerprint


def test_without_test_seals_only_the_test_split(clinc_slice):
    sealed = clinc_slice.without_test()
    assert len(sealed.test) == 0 and len(clinc_slice.test) == 48
    assert list(sealed.validation["text"]) == list(clinc_slice.validation["text"])
    assert list(sealed.train["text"]) == list(clinc_slice.train["text"])
    assert sealed.fingerprint != clinc_slice.fingerprint and sealed.labels == clinc_slice.labels


def test_a_head_with_extra_labels_scores_them_as_errors() -> None:
    """Model labels may cover the dataset's and more: predicting an extra one is wrong, and macro-F1 still
    averages over the dataset's labels only."""
    import numpy as np

    from slimformer.data import UNKNOWN_LABEL, label_positions
    from slimformer.metrics import classification_metrics

    positions = label_positions(["c", "extra", "a", "b"], ["a", "b", "c"])
    assert positions.tolist() == [2, UNKNOWN_LABEL, 0, 1]
    truth = np.array([0, 1, 2, 2])
    predicted = positions[np.array([2, 3, 0, 1])]  # a, b, c right; the last row predicted "extra"
    metrics = classification_metrics(truth, predicted)
    assert metrics["accuracy"] == 0.75
    # per label F1: a 1, b 1, c 2/3 -> the extra label is not a fourth class
    assert metrics["macro_f1"] == pytest.approx((1 + 1 + 2 / 3) / 3)
