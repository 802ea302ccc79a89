"""`serve`: answer classification requests over HTTP (FastAPI + uvicorn). Its options are ServeConfig's fields
(written once, with their help), plus the model folder and the API key file."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from slimformer.commands.options import generated_command, keyword
from slimformer.serve.config import ServeConfig

HELP = "Serve a model folder: POST /predict, GET /healthz /readyz /info /metrics /openapi.json."
API_KEY_FILE_HELP = (
    "File holding the API key (else $SLIMFORMER_API_KEY); /predict and /metrics then need "
    "'Authorization: Bearer <key>'."
)


def _serve(config: ServeConfig, kwargs: dict[str, Any]) -> None:
    # imported here: `slimformer --help` stays instant, and no command pulls torch in before it needs it
    from slimformer.predictor import check_folder
    from slimformer.serve import check_bind, load_api_key
    from slimformer.serve import serve as run_server

    config = dataclasses.replace(config, api_key=load_api_key(kwargs["api_key_file"]))
    config.validate()
    # before announcing a server that will not start
    check_bind(config.host, config.api_key, config.insecure)
    model_dir = kwargs["model_dir"]
    check_folder(model_dir)
    auth = "API key required" if config.api_key else "no API key"
    typer.echo(
        f"serving {model_dir} on http://{config.host}:{config.port} (workers={config.workers}, {auth})", err=True
    )
    run_server(model_dir, config)


serve = generated_command(
    "serve",
    HELP,
    ServeConfig,
    [
        inspect.Parameter(
            "model_dir",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[str, typer.Argument(help="Model folder (PyTorch checkpoint or ONNX folder).")],
        ),
        keyword("api_key_file", None, Annotated[Path | None, typer.Option("--api-key-file", help=API_KEY_FILE_HELP)]),
    ],
    _serve,
)


def register(app: typer.Typer) -> None:
    app.command(name="serve", help=HELP)(serve)
