"""Datasets as train / validation / test splits with one fixed label list.

Specs understood by :func:`load_data`:

- ``clinc150`` or ``clinc150:plus|full|small|imbalanced``: CLINC150 (Larson et al., 2019, CC BY 3.0) in its
  original oos-eval JSON form, read from ``data_dir`` / ``$SLIMFORMER_DATA_DIR`` / ``../shared/data/clinc150``;
  when none of those exists, ``datasets.load_dataset("clinc_oos", config)`` from the hub.
- a folder holding ``train.*``, ``test.*`` and optionally ``validation.*`` (csv, json, jsonl, parquet);
- a single such file, split with a seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.errors import DataError, ModelError

if TYPE_CHECKING:
    import datasets

CLINC_CONFIGS = {
    "plus": "data_oos_plus.json",
    "full": "data_full.json",
    "small": "data_small.json",
    "imbalanced": "data_imbalanced.json",
}
DATA_DIR_ENV = "SLIMFORMER_DATA_DIR"
OOS_LABELS = ("oos", "out_of_scope", "out-of-scope", "out of scope", "outofscope")  # its usual names, any case
UNKNOWN_LABEL = -1  # a predicted label the dataset does not have (see label_positions)
SPLITS = ("train", "validation", "test")
FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DataSplits:
    """Three splits with columns ``text`` (str) and ``label`` (int index into ``labels``)."""

    name: str
    labels: list[str]
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    fingerprint: str = field(default="")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def oos_label_id(self) -> int | None:
        """Index of the out-of-scope label (`OOS_LABELS`, in any case), when the label set has one: the metrics
        then split accuracy into in-scope accuracy and out-of-scope recall."""
        names = [label.strip().lower() for label in self.labels]
        return next((index for index, name in enumerate(names) if name in OOS_LABELS), None)

    def split(self, name: str) -> datasets.Dataset:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def subset(self, max_train: int | None = None, max_eval: int | None = None, seed: int = 0) -> DataSplits:
        """A smaller copy (shuffled with `seed`), for quick runs and tests."""

        def cut(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
            return ds if n is None or n >= len(ds) else ds.shuffle(seed=seed).select(range(n))

        splits = DataSplits(
            name=f"{self.name}[train={max_train},eval={max_eval}]",
            labels=self.labels,
            train=cut(self.train, max_train),
            validation=cut(self.validation, max_eval),
            test=cut(self.test, max_eval),
        )
        splits.fingerprint = _fingerprint(splits)
        return splits

    def without_test(self) -> DataSplits:
        """The same splits with the test split sealed (empty): what a search trains and selects on, so that
        test rows are scored only once, for the final report. Stages skip scoring an empty split."""
        splits = DataSplits(
            name=f"{self.name}[test sealed]",
            labels=self.labels,
            train=self.train,
            validation=self.validation,
            test=self.test.select([]),
        )
        splits.fingerprint = _fingerprint(splits)
        return splits

    def in_label_order(self, labels: list[str]) -> DataSplits:
        """The same splits with label ids renumbered into `labels`' order (a model head's own order), by
        datasets' `align_labels_with_mapping` over the ClassLabel column. `labels` may hold labels the dataset
        has no rows of (a head fine-tuned on a superset); they join the label list."""
        if list(labels) == self.labels:
            return self
        if not set(self.labels) <= set(labels):
            raise DataError(f"the model's {len(labels)} labels do not include all the dataset's {len(self.labels)}")
        mapping = {label: i for i, label in enumerate(labels)}

        def align(ds: datasets.Dataset) -> datasets.Dataset:
            return ds.align_labels_with_mapping(mapping, "label")

        return DataSplits(
            name=self.name,
            labels=list(labels),
            train=align(self.train),
            validation=align(self.validation),
            test=align(self.test),
            fingerprint=self.fingerprint,
        )


def label_positions(model_labels: list[str], data_labels: list[str]) -> np.ndarray:
    """For each output index of a model, the index of that label in the dataset's label list (to score a model's
    predictions against dataset label ids whatever the order of its head). A head may have labels the dataset
    lacks: predicting one is wrong on every row (:data:`UNKNOWN_LABEL`)."""
    position = {label: i for i, label in enumerate(data_labels)}
    missing = sorted(set(data_labels) - set(model_labels))
    if missing:
        raise ModelError(
            f"the model predicts {len(model_labels)} labels and lacks {len(missing)} of the dataset's "
            f"{len(data_labels)} (e.g. {missing[:3]}); use the data it was fine-tuned for"
        )
    return np.array([position.get(label, UNKNOWN_LABEL) for label in model_labels])


def require_data(data: DataSplits | None, stage: str) -> DataSplits:
    """`data`, or a one-line error saying that `stage` needs a dataset."""
    if data is None:
        raise DataError(f"{stage} needs a dataset (--data): it trains or measures accuracy on it")
    return data


def default_clinc_dir() -> Path | None:
    """The first existing CLINC150 folder among $SLIMFORMER_DATA_DIR, ./../shared/data/clinc150 and the
    `shared/` folder beside this checkout."""
    candidates = []
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]))
    candidates.append(Path.cwd().parent / "shared" / "data" / "clinc150")
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data" / "clinc150")
    return next((c for c in candidates if c.is_dir()), None)


def load_data(
    spec: str,
    data_dir: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 42,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> DataSplits:
    """Load `spec` (see module docstring) into :class:`DataSplits`, validating it.

    Raises :class:`DataError` with a one-line reason for a missing file or column, an empty split, empty
    text rows, or test/validation labels that the training split never shows.
    """
    name, _, config = spec.partition(":")
    if name.lower() in ("clinc150", "clinc_oos", "clinc"):
        splits = _load_clinc(config or "plus", data_dir)
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(
                f"dataset {spec!r} not found: give clinc150[:plus|full|small|imbalanced], a folder with "
                "train/validation/test files, or a single csv/json/jsonl/parquet file"
            )
        raw = _read_local(path, label_column, seed, validation_fraction, test_fraction)
        splits = _to_splits(path.name, raw, text_column, label_column)
    splits.fingerprint = _fingerprint(splits)
    return splits


# --- CLINC150 -------------------------------------------------------------------------------------------


def _load_clinc(config: str, data_dir: str | Path | None) -> DataSplits:
    if config not in CLINC_CONFIGS:
        raise DataError(f"unknown clinc150 config {config!r}; expected one of {', '.join(CLINC_CONFIGS)}")
    folder = Path(data_dir) if data_dir else default_clinc_dir()
    if folder is None:
        return _load_clinc_from_hub(config)
    path = folder / CLINC_CONFIGS[config]
    if not path.is_file():
        raise DataError(f"CLINC150 file not found: {path} (set --data-dir or ${DATA_DIR_ENV})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    # oos-eval keeps in-scope and out-of-scope rows apart; the hub's clinc_oos (and the book) merges them
    rows = {
        "train": raw["train"] + raw["oos_train"],
        "validation": raw["val"] + raw["oos_val"],
        "test": raw["test"] + raw["oos_test"],
    }
    columns = {
        split: {"text": [text for text, _ in pairs], "label": [intent for _, intent in pairs]}
        for split, pairs in rows.items()
    }
    return _to_splits(f"clinc150:{config}", _from_columns(columns), "text", "label")


def _load_clinc_from_hub(config: str) -> DataSplits:  # pragma: no cover - needs the dataset hub
    import datasets

    try:
        hub = datasets.load_dataset("clinc_oos", config)
    except Exception as exc:
        raise DataError(
            f"no local CLINC150 folder (set --data-dir or ${DATA_DIR_ENV}) and the hub failed: {exc}"
        ) from exc
    names = hub["train"].features["intent"].names
    columns = {
        split: {"text": hub[hub_split]["text"], "label": [names[i] for i in hub[hub_split]["intent"]]}
        for split, hub_split in zip(SPLITS, ("train", "validation", "test"), strict=True)
    }
    return _to_splits(f"clinc150:{config}", _from_columns(columns), "text", "label")


# --- local files ----------------------------------------------------------------------------------------


def _from_columns(columns: dict[str, dict[str, list]]) -> dict[str, datasets.Dataset]:
    import datasets

    return {split: datasets.Dataset.from_dict(cols) for split, cols in columns.items()}


def read_table(path: Path) -> datasets.Dataset:
    """The rows of one csv, json, jsonl or parquet file; DataError in one line when it cannot be read."""
    import datasets

    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"unsupported file type {path.suffix!r} for {path}; use csv, json, jsonl or parquet")
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "corresponds to no data" in first_line or path.stat().st_size == 0:
            raise DataError(f"{path} is empty (no data rows)") from exc
        raise DataError(f"cannot read {path}: {first_line}") from exc


MIN_ROWS_PER_LABEL = 10  # a stratified 80/10/10 split gives every label a row in validation and in test


def _split_one_file(
    full: datasets.Dataset, path: Path, label_column: str, seed: int, validation_fraction: float, test_fraction: float
) -> dict[str, datasets.Dataset]:
    """Train / validation / test from one file, stratified by label so each split holds every label."""
    if label_column not in full.column_names:
        raise DataError(f"{path} has no column {label_column!r} (columns: {', '.join(full.column_names)})")
    counts = Counter(str(v) for v in column(full, label_column))
    label, fewest = min(counts.items(), key=lambda item: item[1])
    if fewest < MIN_ROWS_PER_LABEL:
        raise DataError(
            f"{path} has {len(full)} rows and label {label!r} only {fewest}: splitting one file into train/validation/"
            f"test needs at least {MIN_ROWS_PER_LABEL} rows per label; give a folder with train/validation/test files"
        )
    held_out = _stratified_split(full, label_column, validation_fraction + test_fraction, seed)
    rest = _stratified_split(
        held_out["test"], label_column, test_fraction / (validation_fraction + test_fraction), seed
    )
    return {"train": held_out["train"], "validation": rest["train"], "test": rest["test"]}


def _stratified_split(rows: datasets.Dataset, label_column: str, test_size: float, seed: int) -> dict[str, Any]:
    """`rows` split in two ("train", "test"), each label in the same proportion in both, rows in file order. A
    plain split where stratifying cannot work (the column missing, a label with one row, fewer held-out rows than
    labels): the split's own checks then name what is wrong."""
    from sklearn.model_selection import train_test_split

    labels = [str(v) for v in column(rows, label_column)] if label_column in rows.column_names else []
    held_out = int(np.ceil(test_size * len(rows)))
    counts = Counter(labels)
    if not counts or min(counts.values()) < 2 or len(counts) > min(held_out, len(rows) - held_out):
        return rows.train_test_split(test_size=test_size, seed=seed)
    kept, taken = train_test_split(np.arange(len(rows)), test_size=held_out, random_state=seed, stratify=labels)
    return {"train": rows.select(np.sort(kept)), "test": rows.select(np.sort(taken))}


def _find_split_file(folder: Path, split: str) -> Path | None:
    stems = (split, "val", "dev") if split == "validation" else (split,)
    for stem in stems:
        for suffix in FILE_FORMATS:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _read_local(
    path: Path, label_column: str, seed: int, validation_fraction: float, test_fraction: float
) -> dict[str, datasets.Dataset]:
    if path.is_file():
        return _split_one_file(read_table(path), path, label_column, seed, validation_fraction, test_fraction)

    raw = {}
    for split in SPLITS:
        found = _find_split_file(path, split)
        if found is not None:
            raw[split] = read_table(found)
    for split in ("train", "test"):
        if split not in raw:
            raise DataError(f"no {split} file in {path} (expected {split}.csv/.json/.jsonl/.parquet)")
    if "validation" not in raw:
        parts = _stratified_split(raw["train"], label_column, validation_fraction, seed)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
    return raw


def _to_splits(name: str, raw: dict[str, datasets.Dataset], text_column: str, label_column: str) -> DataSplits:
    for split, ds in raw.items():
        missing = [c for c in (text_column, label_column) if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{split} split of {name} has no column {missing[0]!r} "
                f"(columns: {', '.join(ds.column_names)}); use --text-column / --label-column"
            )
        if len(ds) == 0:
            raise DataError(f"{split} split of {name} is empty")
        texts = column(ds, text_column)
        empty = sum(1 for t in texts if t is None or not str(t).strip())
        if empty:
            raise DataError(f"{split} split of {name} has {empty} empty text row(s) in column {text_column!r}")

    train_labels = [str(v) for v in column(raw["train"], label_column)]
    labels = sorted(set(train_labels), key=_label_sort_key)
    if len(labels) < 2:
        raise DataError(f"train split of {name} has {len(labels)} label(s); a classifier needs at least 2")
    folded = Counter(label.lower() for label in labels)
    if clash := next((label for label in labels if folded[label.lower()] > 1), None):
        raise DataError(f"train split of {name} has labels that differ only in case (e.g. {clash!r}); rename them")
    label_ids = {label: i for i, label in enumerate(labels)}
    out = {}
    for split, ds in raw.items():
        values = [str(v) for v in column(ds, label_column)]
        unknown = Counter(v for v in values if v not in label_ids)
        if unknown:
            shown = ", ".join(repr(v) for v, _ in unknown.most_common(3))
            raise DataError(
                f"{split} split of {name} has {sum(unknown.values())} row(s) with labels unknown to train: {shown}"
            )
        out[split] = _normalise(ds, text_column, [label_ids[v] for v in values], labels)
    return DataSplits(name=name, labels=labels, train=out["train"], validation=out["validation"], test=out["test"])


def _normalise(ds: datasets.Dataset, text_column: str, label_ids: list[int], labels: list[str]) -> datasets.Dataset:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=labels)})
    return datasets.Dataset.from_dict(
        {"text": [str(t) for t in column(ds, text_column)], "label": label_ids}, features=features
    )


def column(ds: datasets.Dataset, name: str) -> list:
    """One column as a plain list (datasets >= 4 returns a lazy Column object)."""
    return list(ds[name])


def _label_sort_key(label: str) -> tuple[int, float | str]:
    # numeric labels sort numerically (2 < 10), others alphabetically
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def _fingerprint(splits: DataSplits) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(splits.labels).encode())
    for split in SPLITS:
        ds = splits.split(split)
        digest.update(json.dumps([column(ds, "text"), column(ds, "label")]).encode())
    return digest.hexdigest()[:16]
