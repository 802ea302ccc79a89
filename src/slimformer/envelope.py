"""The one stage envelope and the registry: every stage is one config class and one function.

A stage function only builds: ``build(source, folder, config, data, teacher) -> StageResult`` reads the model
folder `source` (already resolved to a path) and writes its model files into `folder`, then returns its metrics
and the :class:`~slimformer.artifacts.Session` its artefact runs with. Everything around it happens once, in
:func:`run_stage`: the config is validated (with what the stage needs of the data), the source resolved and
checked by the family preflight, the truncation length resolved (the config's `max_length`, else the source's
recorded one, else 128, capped by what the model and the teacher take), the output folder opened atomically
(a killed stage leaves only `.tmp-*`), `session.json` written (an ONNX artefact's threads measured on this CPU
when the stage returns `thread_queries`) and `metrics.json` stamped with the stage's name and session.

This module imports no stage: each stage module defines its :class:`Stage` and its public function calls
:func:`run_stage` with it; :mod:`slimformer.stages` is the catalog that registers the built-in ones.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slimformer.artifacts import METRICS_FILE, StageResult


@dataclass(frozen=True)
class Stage:
    """One registered stage: its name (the CLI command and recipe key), config class and function."""

    name: str
    config: type
    # build(source, folder, config, data, teacher, **extra); it imports torch and the like inside, so the CLI
    # starts without them
    function: Callable[..., StageResult]
    summary: str  # one line for `--help`

    @property
    def run(self) -> Callable[..., dict[str, Any]]:
        """``run(source, output, config, data, teacher, **extra) -> metrics``: the stage through the envelope."""
        return functools.partial(run_stage, self)


def run_stage(
    stage: str | Stage,
    source: str | Path,
    output: str | Path,
    config: Any = None,
    data: Any = None,
    teacher: str | Path | None = None,
    reuse: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """Run `stage` (a :class:`Stage`, or the name of a registered one) on the model folder `source` (or
    ``default``) into `output`; returns the metrics it wrote to `output/metrics.json`. `extra` goes to the stage
    function (the search's callbacks).

    With `reuse`, `output` is a cache entry named by :func:`stage_key`: a finished folder (its metrics.json
    written) is returned as it is, and one being made by another process is waited for under a file lock beside
    it, so the pipeline and `auto`'s workers never make the same folder twice."""
    output = Path(output)
    with claim_folder(output) if reuse else contextlib.nullcontext(True) as todo:
        if not todo:
            from slimformer.artifacts import read_metrics

            return read_metrics(output)
        return _build(stage, source, output, config, data, teacher, extra)


def is_finished(folder: str | Path) -> bool:
    """True when `folder` is a finished stage folder (its metrics.json is written last, atomically)."""
    return (Path(folder) / METRICS_FILE).is_file()


@contextlib.contextmanager
def claim_folder(folder: Path) -> Iterator[bool]:
    """Yield True when `folder` must be made (holding its lock), False when it is already finished."""
    import fcntl
    import shutil

    if is_finished(folder):
        yield False
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process making the same folder: wait, then reuse it
        try:
            done = is_finished(folder)
            if not done:
                for leftover in folder.parent.glob(f".tmp-{folder.name}-*"):  # a killed writer's half folder
                    shutil.rmtree(leftover, ignore_errors=True)
            yield not done
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def model_key(path: Path) -> str:
    """A content key for an input model folder: config + weight file sizes and mtimes (cheap, not a full hash)."""
    import hashlib

    digest = hashlib.sha256(str(path.resolve()).encode())
    for file in sorted(path.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:12]


def stage_key(kind: str, config: Any, input_key: str, teacher: Path | None, data: Any, **extra: Any) -> str:
    """The cache key of one stage run: its kind and options, its input's key, the teacher and the data.
    `run` and `auto` both name stage folders by it, so a finished stage is found again and never redone."""
    import dataclasses
    import hashlib
    import json

    payload = {
        "kind": kind,
        "config": dataclasses.asdict(config),
        "input": input_key,
        "teacher": model_key(teacher) if teacher else None,
        "data": data.fingerprint if data is not None else None,
        **extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _build(
    stage: str | Stage, source: str | Path, output: Path, config: Any, data: Any, teacher: Any, extra: dict
) -> dict[str, Any]:
    """run_stage's work once it is known the folder must be made (see :func:`run_stage`)."""
    from slimformer.artifacts import atomic_output_dir, check_output_dir, write_metrics, write_session
    from slimformer.errors import ConfigError
    from slimformer.families import preflight
    from slimformer.models import resolve_max_length, resolve_model_path

    if isinstance(stage, str):
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        stage = STAGES[stage]
    name = stage.name
    config = config if config is not None else stage.config()
    config.check(data)
    source_path = resolve_model_path(source)
    teacher_path = resolve_model_path(teacher) if teacher is not None and config.needs_teacher else None
    reason = preflight(source_path, name, config)
    if reason:
        raise ConfigError(reason)
    if hasattr(config, "max_length"):
        length = resolve_max_length(source_path, config.max_length, also=teacher_path)
        config = replace(config, max_length=length)
    output = check_output_dir(output)
    in_place = contextlib.nullcontext(output) if config.writes_in_place else atomic_output_dir(output)
    with in_place as folder:
        result = stage.function(source_path, folder, config, data, teacher_path, **extra)
        session = write_session(folder, result.session) if result.session is not None else None
        if result.session is not None and result.thread_queries and result.session.threads is None:
            from slimformer.threads import TUNE_QUERIES, tune_threads
            from slimformer.timing import sample_queries

            tune_threads(folder, sample_queries(list(result.thread_queries), TUNE_QUERIES))
            session = saved_settings(folder)
        metrics = {"stage": name, **result.metrics}
        if session is not None:
            metrics["session"] = session
        write_metrics(folder, metrics)
    return metrics


def saved_settings(folder: Path) -> dict[str, Any]:
    """A folder's session.json without the thread sweep (what metrics.json records)."""
    from slimformer.predictor import saved_session

    return {key: value for key, value in saved_session(folder).items() if key != "thread_sweep"}


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add `stage` to the registry (the CLI and recipes pick it up); returns it."""
    STAGES[stage.name] = stage
    return stage


def register_method(stage_name: str, method: type, function: Any) -> Stage:
    """Add a method to a stage whose config :func:`slimformer.config.with_methods` built (torchao style): its
    `MethodConfig` class and its function (called as the stage's other methods are, or "module:function"). The
    stage's CLI options and recipes gain the method's fields. Returns the stage as registered now."""
    from slimformer.config import add_method

    stage = STAGES[stage_name]
    return register_stage(replace(stage, config=add_method(stage.config, method, function)))
