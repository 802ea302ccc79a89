"""Options that several commands share, so each reads the same way everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

DataOption = Annotated[
    str,
    typer.Option(
        "--data",
        help="clinc150[:plus|full|small|imbalanced], a folder with train/validation/test files, or one file.",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the CLINC150 JSON files (default: $SLIMFORMER_DATA_DIR or ../shared/data/clinc150).",
    ),
]
TextColumnOption = Annotated[str, typer.Option("--text-column", help="Text column of a local dataset.")]
LabelColumnOption = Annotated[str, typer.Option("--label-column", help="Label column of a local dataset.")]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Output folder (written atomically).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]


def load_data_option(data: str, data_dir: Path | None, text_column: str, label_column: str, seed: int = 42) -> Any:
    """Load the dataset named by the shared options (see :func:`slimformer.data.load_data`)."""
    from slimformer.data import load_data

    return load_data(data, data_dir=data_dir, text_column=text_column, label_column=label_column, seed=seed)


def print_json(payload: Any) -> None:
    import json

    from rich.console import Console

    Console().print_json(json.dumps(payload, default=str))
