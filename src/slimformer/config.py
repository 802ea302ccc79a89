"""What every stage config shares: fields carry their own help text, and a config says what is special about
its stage (does it train against the teacher, how `--quick` shrinks it, where its model lands in its folder).

A config field is written once, as ``name: type = option(default, "help")``. The CLI options, their ``--help``
text and the comments of `slimformer recipe --explain` are all generated from those fields, so adding an option
to a stage is one line here and nothing anywhere else.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Self

from slimformer.errors import ConfigError

QUICK_MAX_EPOCHS = 1.0  # --quick: cap on every training stage's epochs


def option(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A config field with its help text (and, rarely, a CLI flag name other than --field-name)."""
    metadata = {"help": help} if flag is None else {"help": help, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class StageConfig:
    """Base class of every stage's config dataclass."""

    # class-level facts the pipeline and the CLI read instead of special-casing stages
    uses_data: ClassVar[str] = "required"  # "required" | "optional" (parity on built-in sentences) | "none"
    model_subdir: ClassVar[str] = ""  # the stage's model inside its output folder ("" = the folder itself)
    produces_model: ClassVar[bool] = True

    @property
    def needs_teacher(self) -> bool:
        """True when this run trains against the fine-tuned teacher (distillation, recovery, QAT)."""
        return False

    def quick(self) -> Self:
        """The same config shrunk for `--quick` (a small subset, for trying a recipe and for tests)."""
        return self

    def validate(self) -> None:
        """Raise ConfigError with a one-line reason for an out-of-range value."""


def help_text(cls: type, name: str) -> str:
    """The help text of field `name` of config class `cls`."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return str(field.metadata.get("help", ""))


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of a config dataclass."""
    return typing.get_type_hints(cls)


def build_config(cls: type, options: dict[str, Any], source: str = "") -> Any:
    """`cls(**options)` validated: unknown options and bad values are one-line ConfigErrors naming `source`."""
    prefix = f"{source}: " if source else ""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in names:
            raise ConfigError(f"{prefix}unknown option {key!r} (valid: {', '.join(names)})")
    try:
        config = cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}{exc}") from exc
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from exc
    return config


def commented_options(cls: type, indent: str = "") -> str:
    """Every field of config class `cls` as YAML `name: default  # help` lines (a recipe stage's options)."""
    import yaml

    lines = []
    for field in dataclasses.fields(cls):
        default = field.default
        value = list(default) if isinstance(default, tuple) else default
        text = yaml.safe_dump({field.name: value}, default_flow_style=True, width=10_000).strip().strip("{}")
        lines.append(f"{indent}{text}  # {field.metadata.get('help', '')}".rstrip(" #"))
    return "\n".join(lines) + "\n"
