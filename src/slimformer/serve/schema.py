"""What /predict takes and answers, and the one error shape every 4xx/5xx uses: ``{"error", "message",
"details"}`` (a short code, a sentence for a person, and where in the request for validation errors)."""

from typing import Annotated, Any

from slimformer.serve.config import ServeConfig

NOT_ONLY_WHITESPACE = r"[^ \t\n\r\f\v]"


class ServeError(Exception):
    """A request that cannot be answered: becomes a JSON error with this status code."""

    def __init__(
        self,
        status_code: int,
        error: str,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.details = details
        self.headers = headers


def error_response(exc: ServeError) -> Any:
    """The JSON response of an error: the same shape for every status."""
    from fastapi.responses import JSONResponse

    content = {"error": exc.error, "message": exc.message, "details": exc.details}
    return JSONResponse(content, status_code=exc.status_code, headers=exc.headers)


def _drop_default(schema: dict[str, Any]) -> None:
    # the field is optional but never null: advertising "default": null would contradict "type": "string"
    schema.pop("default", None)


def _json_integer(value: Any) -> Any:
    # an integer as JSON Schema means it: 2 and 2.0 are, true and "2" are not (pydantic's lax mode takes them)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"must be an integer, not {_json_type(value)}")
    return value


def build_models(config: ServeConfig) -> dict[str, type]:
    """Pydantic models for /predict and the other endpoints, with this config's limits in their schema."""
    # long by design: the models are classes built here because their limits come from the config
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

    text_type = Annotated[
        str,
        # not only ASCII whitespace; `\S` would differ between regex engines (U+0085 and friends)
        StringConstraints(min_length=1, max_length=config.max_chars_per_text, pattern=NOT_ONLY_WHITESPACE),
    ]

    class PredictRequest(BaseModel):
        """Exactly one of `text` or `texts`, and optionally `top_k`."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]},
        )
        text: text_type = Field(
            default=None,
            json_schema_extra=_drop_default,
            description=f"One text to classify (1..{config.max_chars_per_text} characters, not only "
            "whitespace). "
            "Text longer than the model's max tokens is truncated and the prediction says so.",
        )
        texts: list[text_type] = Field(
            default=None,
            min_length=1,
            max_length=config.max_texts_per_request,
            json_schema_extra=_drop_default,
            description=f"Several texts (1..{config.max_texts_per_request}), each as for `text`.",
        )
        top_k: int | None = Field(
            default=None,
            ge=0,
            le=config.max_top_k,
            description=f"Also return the k most probable labels (0: none; default {config.top_k}; "
            "capped at the number of labels).",
        )

        _top_k_is_integer = field_validator("top_k", mode="before")(_json_integer)

        @model_validator(mode="after")
        def _exactly_one_input(self) -> "PredictRequest":
            if (self.text is None) == (self.texts is None):
                raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
            return self

        def all_texts(self) -> list[str]:
            return [self.text] if self.text is not None else list(self.texts)

    class LabelScore(BaseModel):
        label: str
        score: float = Field(ge=0.0, le=1.0, description="Softmax probability.")

    class Prediction(BaseModel):
        label: str = Field(description="Most probable label.")
        score: float = Field(ge=0.0, le=1.0, description="Its softmax probability.")
        truncated: bool = Field(
            description="True when the text had more tokens than the model's max_length: only its first "
            "max_length tokens were classified."
        )
        num_tokens: int = Field(ge=0, description="Tokens of the text (special ones too) before truncation.")
        top_k: list[LabelScore] | None = Field(default=None, description="The k most probable labels.")

    class PredictResponse(BaseModel):
        predictions: list[Prediction] = Field(description="One prediction per input text, in input order.")
        max_length: int = Field(description="Model max tokens; longer texts are truncated to it.")

    class ErrorDetail(BaseModel):
        location: str = Field(description="Where in the request, e.g. 'texts[2]' or 'body'.")
        message: str

    class ErrorResponse(BaseModel):
        error: str = Field(description="Short machine-readable code, e.g. 'validation_error'.")
        message: str = Field(description="What was wrong, for a human.")
        details: list[ErrorDetail] | None = None

    class Status(BaseModel):
        status: str

    return {
        "PredictRequest": PredictRequest,
        "PredictResponse": PredictResponse,
        "Prediction": Prediction,
        "LabelScore": LabelScore,
        "ErrorResponse": ErrorResponse,
        "Status": Status,
    }


# validation messages a person can act on

_MESSAGES = {
    "string_too_short": lambda e: "must not be empty",
    "string_pattern_mismatch": lambda e: "must contain a character other than spaces, tabs and line breaks",
    "string_too_long": lambda e: (
        f"has {len(e['input'])} characters; the limit is {e['ctx']['max_length']} "
        "(texts under the limit but over the model's max tokens are truncated, not rejected)"
    ),
    "too_short": lambda e: "must hold at least one text",
    "too_long": lambda e: (
        f"holds {e['ctx'].get('actual_length', 'too many')} items; the limit is {e['ctx']['max_length']}"
    ),
    "extra_forbidden": lambda e: "is not a known field (use 'text' or 'texts', and optionally 'top_k')",
    "missing": lambda e: "is required",
    "model_attributes_type": lambda e: 'must be a JSON object such as {"text": "..."}',
    "model_type": lambda e: 'must be a JSON object such as {"text": "..."}',
    "string_type": lambda e: f"must be a string, not {_json_type(e.get('input'))}",
    "list_type": lambda e: f"must be a list of strings, not {_json_type(e.get('input'))}",
    "string_unicode": lambda e: "is not valid Unicode (it holds a lone surrogate)",
    "less_than_equal": lambda e: f"must be <= {e['ctx']['le']}",
    "greater_than_equal": lambda e: f"must be >= {e['ctx']['ge']}",
    "int_from_float": lambda e: "must be a whole number",
    "int_type": lambda e: f"must be an integer, not {_json_type(e.get('input'))}",
}


def _json_type(value: Any) -> str:
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def _location(loc: tuple) -> str:
    parts = [p for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def validation_error(errors: list[dict[str, Any]]) -> ServeError:
    """Turn pydantic/FastAPI validation errors into one ServeError (400 for malformed JSON, else 422)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        error = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        position = error["loc"][-1] if error.get("loc") else "?"
        message = f"request body is not valid JSON: {reason} (at character {position})"
        return ServeError(400, "malformed_json", message)
    details = []
    for e in errors:
        render = _MESSAGES.get(e.get("type", ""))
        try:
            message = render(e) if render else str(e.get("msg", "is invalid"))
        except (KeyError, TypeError):
            message = str(e.get("msg", "is invalid"))
        message = message.removeprefix("Value error, ")
        details.append({"location": _location(tuple(e.get("loc", ()))), "message": message})
    summary = "; ".join(
        f"{d['location']}: {d['message']}" if d["location"] != "body" else d["message"] for d in details[:5]
    )
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return ServeError(422, "validation_error", f"invalid request: {summary}{more}", details)
