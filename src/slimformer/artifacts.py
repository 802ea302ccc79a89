"""Artefact folders: every stage writes one folder atomically, with a `metrics.json` beside the model."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimformer.errors import SlimformerError
from slimformer.models import SESSION_FILE

METRICS_FILE = "metrics.json"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".data", ".bin", ".pt", ".npz")


@contextlib.contextmanager
def atomic_output_dir(output: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to `output`; rename it to `output` only when the block succeeds.

    A crash or kill mid-way leaves a `.tmp-*` folder, never something that looks like a finished artefact.
    Under torchrun only rank 0 writes `output`: the other ranks' folders are thrown away (they train the same
    model in lock-step through DDP).
    """
    output = check_output_dir(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{output.name}-", dir=output.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if output.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SlimformerError(f"output folder {output} already exists")
        old = output.with_name(f".old-{output.name}-{os.getpid()}")
        output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(output)


def is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun (data-parallel) launch."""
    return int(os.environ.get("RANK", "0")) == 0


def check_output_dir(output: str | Path) -> Path:
    """`output` as a Path, once its parent folder exists and takes new files; else a one-line error (run
    before any work, so a bad --output fails at once)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise SlimformerError(f"output path {output} exists and is not a folder")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix=f".tmp-{output.name}-", dir=output.parent).cleanup()
    except OSError as exc:
        raise SlimformerError(f"cannot write the output folder {output}: {exc.strerror or exc}") from exc
    return output


def read_json_cache(path: Path) -> dict[str, Any]:
    """A JSON object a work folder keeps between runs (screens, thread scaling, Pareto fronts); {} when absent or
    unreadable: a cache that cannot be read is measured again, not an error."""
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def remember_json(path: Path, key: str, value: Any) -> None:
    """Set `key` in the JSON object cache at `path` (see :func:`read_json_cache`), written atomically; two
    processes at once: the last one's entries win, and the other's are measured again."""
    memory = read_json_cache(path)
    memory[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, memory)


def write_json(path: str | Path, payload: Any) -> Path:
    """Write `payload` as indented JSON (atomically: temp file + rename; each process its own temp file, so
    processes writing the same file at once never mix their bytes: the last rename wins)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_metrics(folder: str | Path, metrics: dict[str, Any]) -> Path:
    """Write `metrics.json` into an artefact folder."""
    return write_json(Path(folder) / METRICS_FILE, metrics)


@dataclass(frozen=True)
class Session:
    """`session.json`: how the artefact in a folder runs (`slimformer.load` and every later stage read it): its
    truncation length and, for ONNX Runtime, threads (None = every core at load time), graph level and whether
    idle intra-op threads spin (None = ONNX Runtime's default; `slimformer tune-threads` measures it). A stage
    returns one; the stage envelope (:func:`slimformer.envelope.run_stage`) writes it."""

    max_length: int
    threads: int | None = None
    graph_optimization_level: str = "all"
    spinning: bool | None = None

    def settings(self) -> dict[str, Any]:
        """The JSON object session.json holds."""
        from slimformer.predictor import SPINNING_KEY

        return {
            "max_length": self.max_length,
            "threads": self.threads,
            "graph_optimization_level": self.graph_optimization_level,
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            SPINNING_KEY: self.spinning,
        }


@dataclass
class StageResult:
    """What a stage function built: its metrics (the envelope adds `stage` and `session`) and how the artefact
    runs. With `thread_queries`, an ONNX artefact without fixed threads gets the fastest threads x spinning on
    this CPU, timed over them (:func:`slimformer.threads.tune_threads`)."""

    metrics: dict[str, Any]
    session: Session | None  # None: the folder holds no model of its own (the search: see its best_model/)
    thread_queries: Sequence[str] = field(default_factory=list)


def write_session(
    folder: str | Path,
    max_length: int | Session,
    threads: int | None = None,
    graph_optimization_level: str = "all",
    spinning: bool | None = None,
) -> dict[str, Any]:
    """Write `session.json` into `folder` (a :class:`Session`, or its fields) and return its settings."""
    session = (
        max_length
        if isinstance(max_length, Session)
        else Session(max_length, threads, graph_optimization_level, spinning)
    )
    settings = session.settings()
    write_json(Path(folder) / SESSION_FILE, settings)
    return settings


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """Read an artefact folder's `metrics.json` ({} when absent)."""
    path = Path(folder) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def weights_size_bytes(folder: str | Path) -> int:
    """Bytes of the weight files in a model folder (safetensors / ONNX and its external data)."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def folder_size_bytes(folder: str | Path) -> int:
    """Bytes of every file under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
