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


def option(default: Any, help: str, *, flag: str | None = None, cli: bool = True, repr: bool = True) -> Any:
    """A config field with its help text (and, rarely, a CLI flag name other than --field-name, or `cli=False`
    for a field no command line should carry, such as a secret)."""
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if not cli:
        metadata["cli"] = False
    return dataclasses.field(default=default, metadata=metadata, repr=repr)


@dataclasses.dataclass
class StageConfig:
    """Base class of every stage's config dataclass."""

    # class-level facts the pipeline and the CLI read instead of special-casing stages
    uses_data: ClassVar[str] = "required"  # "required" | "optional" (parity on built-in sentences) | "none"
    model_subdir: ClassVar[str] = ""  # the stage's model inside its output folder ("" = the folder itself)
    produces_model: ClassVar[bool] = True
    # True: the stage resumes in its output folder (the search's study.db), so the envelope opens no atomic
    # folder for it and the stage writes its own model folders atomically
    writes_in_place: ClassVar[bool] = False
    accepts_teacher: ClassVar[bool] = False  # can it learn from a teacher (the CLI then offers --teacher)?

    @property
    def needs_teacher(self) -> bool:
        """True when this run trains against the fine-tuned teacher (distillation, recovery, QAT)."""
        return False

    def quick(self) -> Self:
        """The same config shrunk for `--quick` (a small subset, for trying a recipe and for tests)."""
        return self

    def validate(self) -> None:
        """Raise ConfigError with a one-line reason for an out-of-range value."""

    def check(self, data: Any) -> None:
        """`validate()`, then a one-line DataError when the stage needs a dataset and `data` is None."""
        from slimformer.errors import DataError

        self.validate()
        if data is None and self.uses_data == "required":
            name = type(self).__name__.removesuffix("Config").lower()
            raise DataError(f"{name} needs a dataset (--data): it trains or measures accuracy on it")


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


@dataclasses.dataclass
class MethodConfig:
    """Options of one method of a stage, torchao style: the config's type says which method runs, and the stage
    dispatches on it. Its fields are written once, here; the stage's CLI / recipe config gets them all (see
    :func:`with_methods`)."""

    method: ClassVar[str] = ""
    # what the method works on, where a stage offers both (quantize: an ONNX folder, or a PyTorch checkpoint)
    takes_checkpoint: ClassVar[bool] = False

    def validate(self) -> None:
        """Raise ConfigError with a one-line reason for an out-of-range value."""


MethodFunction = Any  # a callable, or "module:function" imported on first use (the CLI starts without torch)


def with_methods(base: type, methods: dict[type[MethodConfig], MethodFunction], default: str, what: str) -> type:
    """The config class a stage's CLI and recipes see: `base`'s fields (what every method shares), `method`
    (one of `methods`) and every method's own fields, each with its help text and which methods use it.
    ``config.method_config()`` is the chosen method's own config (an option of another method is refused) and
    ``config.method_function()`` the function `methods` maps its type to, which the stage calls. The class keeps
    what built it (``methods``, ``options_base``, ``default_method``, ``what``), so :func:`add_method` can
    build it again with one more method."""
    by_name = {m.method: m for m in methods}
    base_names = {f.name for f in dataclasses.fields(base)}
    owners: dict[str, list[str]] = {}
    specs: dict[str, tuple[Any, dataclasses.Field]] = {}
    for method in methods:
        hints = typing.get_type_hints(method)
        for f in dataclasses.fields(method):
            owners.setdefault(f.name, []).append(method.method)
            if f.name in specs and specs[f.name][1].default != f.default:
                raise TypeError(f"{f.name} has different defaults in the {what} methods")
            specs.setdefault(f.name, (hints[f.name], f))
    choices = " | ".join(by_name)
    fields: list[tuple[str, Any, Any]] = [("method", str, option(default, f"{what.capitalize()} method: {choices}."))]
    for name, (hint, f) in specs.items():
        if name not in base_names:
            help_ = f"{', '.join(owners[name])}: {f.metadata.get('help', '')}"
            fields.append((name, hint, dataclasses.field(default=f.default, metadata={**f.metadata, "help": help_})))

    def method_config(self: Any) -> MethodConfig:
        """The chosen method's own config (a ConfigError for an unknown method or another method's option)."""
        if self.method not in by_name:
            raise ConfigError(f"unknown {what} method {self.method!r}; use one of {', '.join(by_name)}")
        chosen = by_name[self.method]
        own = {f.name for f in dataclasses.fields(chosen)}
        for name, (_, f) in specs.items():
            if name not in own and name not in base_names and getattr(self, name) != f.default:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} is for {' / '.join(owners[name])} {what}, not {self.method}")
        return chosen(**{name: getattr(self, name) for name in own})

    def validate(self: Any, *args: Any) -> None:
        self.method_config().validate()  # the method and its own options first, then what all methods share
        base.validate(self, *args)

    def method_function(self: Any) -> Any:
        """The function of the chosen method (imported now when registered as "module:function")."""
        function = methods[by_name[self.method]]
        if isinstance(function, str):
            import importlib

            module, _, attribute = function.partition(":")
            function = getattr(importlib.import_module(module), attribute)
        return function

    name = base.__name__.removesuffix("Options") + "Config"
    namespace = {
        "method_config": method_config,
        "method_function": method_function,
        "validate": validate,
        "__doc__": base.__doc__,
        "methods": dict(methods),
        "options_base": base,
        "default_method": default,
        "what": what,
    }
    cls = dataclasses.make_dataclass(name, fields, bases=(base,), namespace=namespace)
    cls.__module__ = base.__module__  # pickles and prints as e.g. slimformer.prune.stage.PruneConfig
    return cls


def add_method(config: type, method: type[MethodConfig], function: MethodFunction) -> type:
    """`config` (a class :func:`with_methods` built) built again with `method` and its `function` added."""
    methods = {**config.methods, method: function}  # type: ignore[attr-defined]
    return with_methods(config.options_base, methods, config.default_method, config.what)  # type: ignore[attr-defined]
