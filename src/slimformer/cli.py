"""The `slimformer` command line: a thin Typer layer over the stage functions.

Heavy libraries (torch, transformers, onnxruntime) are imported inside the commands so `--help` is instant.
Every error a user can cause is a `SlimformerError` and ends as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys

import typer

from slimformer.commands import STANDALONE, register_all
from slimformer.errors import SlimformerError

HELP = "Make fine-tuned transformer text classifiers fast and small for CPU production."


def build_app(command: str | None = None) -> typer.Typer:
    """The Typer app with every command, or with only `command` when it can be registered alone (`serve`)."""
    app = typer.Typer(
        name="slimformer", help=HELP, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False
    )
    if command in STANDALONE:
        app.callback()(lambda: None)  # keeps `serve` a subcommand when it is the only one registered
    register_all(app, command)
    return app


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    app = build_app(args[0] if args else None)
    try:
        code = app(args=args, standalone_mode=False, prog_name="slimformer")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown command, bad option value, ...
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message())
            sys.exit(0)
        message = " ".join(exc.format_message().split())
        if message.startswith("Got unexpected extra argument"):
            message += (
                " (a list option takes one value per flag: repeat it, e.g. --layers-choices 1 --layers-choices 2)"
            )
        print(f"error: {message}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except SlimformerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
