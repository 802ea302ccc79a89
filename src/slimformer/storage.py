"""Optuna's RDB storage, opened the same way by `search` and `auto`: one-line errors, passwords masked."""

from __future__ import annotations

from typing import Any

from slimformer.errors import ConfigError


def printable_url(url: str) -> str:
    """The storage URL with any password masked (it goes into metrics.json and the console)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL sqlalchemy understands: nothing to mask
        return url


def trial_count(storage: Any, study_name: str) -> int:
    """How many trials the study `study_name` holds in `storage` (0 when it does not exist yet): a resumed or
    joining sampler adds it to its seed, so its random start-up trials do not repeat earlier ones."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def rdb_storage(url: str, **options: Any) -> Any:
    """`optuna.storages.RDBStorage(url, **options)`, or a one-line ConfigError (missing driver, bad URL,
    unreachable server)."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url, **options)
    except ImportError as exc:
        scheme = url.split(":")[0]
        hint = "pip install 'slimformer[distributed]'" if scheme.startswith("postgres") else "install its driver"
        raise ConfigError(f"the {scheme} storage needs a database driver: {hint}") from exc
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot open the optuna storage {printable_url(url)}: {reason}") from exc
