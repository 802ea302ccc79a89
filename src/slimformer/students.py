"""Students built from a fine-tuned teacher's own layers: the depth is cut, everything else is copied.

What differs per encoder family (where the layer stack lives, which config fields follow the depth) is read
from `slimformer.families`, so distillation and the search build students the same way for every family.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.artifacts import atomic_output_dir
from slimformer.errors import ConfigError, ModelError
from slimformer.models import save_checkpoint

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def evenly_spaced_layers(teacher_layers: int, student_layers: int, first: int = 0) -> list[int]:
    """Indices of the teacher layers a `student_layers`-deep student keeps: evenly spaced from layer `first` to
    the last (6 -> 3 keeps [0, 2, 5], or [1, 3, 5] from layer 1; 12 -> 6 keeps [0, 2, 4, 7, 9, 11]; K = 1 keeps
    the last one). `first` moves down where fewer than K layers follow it.

    The last layer is always kept because the teacher's pooler and classifier head were fine-tuned on its
    output; DistilBERT's every-other-layer [0, 2, 4] drops it (it initialised from a pre-trained, not a
    fine-tuned, model). Starting from layer 1 gave 2-layer students of MiniLM-L6 +0.6 in-scope points
    (BENCHMARKS.md, "Students that keep accuracy").
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"student layers must be in 1..{teacher_layers} (the teacher's depth), got {student_layers}")
    if not 0 <= first < teacher_layers:
        raise ConfigError(f"the first kept layer must be in 0..{teacher_layers - 1}, got {first}")
    if student_layers == 1:
        return [teacher_layers - 1]
    first = min(first, teacher_layers - student_layers)
    span = teacher_layers - 1 - first
    return [first + round(i * span / (student_layers - 1)) for i in range(student_layers)]


def build_student_from_teacher(
    teacher_dir: str | Path, num_layers: int, first_layer: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]:
    """A copy of the teacher classifier keeping `num_layers` encoder layers evenly spaced from `first_layer` to
    the last (in memory).

    Returns (student, tokenizer, kept_layer_indices); embeddings, pooler and classifier head are copied.
    The family (:mod:`slimformer.families`) says where the layer stack is and which config fields follow the
    depth (ModernBERT's `layer_types` keeps the kept layers' own attention kinds). ALBERT repeats one shared
    layer: its student repeats the same weights fewer times (kept indices are the repetitions it stands for).
    """
    from transformers import AutoModelForSequenceClassification

    from slimformer.families import family_of
    from slimformer.models import load_classifier, load_tokenizer

    teacher = load_classifier(teacher_dir)
    family = family_of(teacher)
    config = teacher.config
    depth = family.config_depth(config)
    kept = evenly_spaced_layers(depth, num_layers, first_layer)
    state = teacher.state_dict() if family.shared_layers else _kept_layer_state(teacher, family.layers, kept)
    for field in family.depth_fields:
        setattr(config, field, num_layers)
    for field in family.per_layer_fields:
        values = getattr(config, field, None)
        if isinstance(values, list) and len(values) == depth:
            setattr(config, field, [values[i] for i in kept])
    try:
        student = AutoModelForSequenceClassification.from_config(config)
    except ValueError as exc:  # a depth-dependent config field this version of slimformer does not know
        raise ModelError(
            f"cannot build a {num_layers}-layer {family.name} student: {str(exc).splitlines()[0]}"
        ) from exc
    student.load_state_dict(state, strict=True)
    return student, load_tokenizer(teacher_dir), kept


def _kept_layer_state(teacher: PreTrainedModel, stack: str, kept: list[int]) -> dict[str, Any]:
    """The teacher's weights with the layers of `stack` (a dotted path) renumbered to the kept ones only."""
    import re

    layer_key = re.compile(rf"^{re.escape(stack)}\.(\d+)\.(.*)$")
    new_index = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, tensor in teacher.state_dict().items():
        match = layer_key.match(key)
        if match is None:
            state[key] = tensor
        elif int(match.group(1)) in new_index:
            state[f"{stack}.{new_index[int(match.group(1))]}.{match.group(2)}"] = tensor
    return state


def student_from_teacher(
    teacher_dir: str | Path, num_layers: int, output_dir: str | Path, first_layer: int = 0
) -> list[int]:
    """Save a `num_layers`-deep student made from the teacher (see :func:`build_student_from_teacher`) as an
    HF checkpoint with `num_hidden_layers = num_layers`. Returns the kept teacher layer indices."""
    student, tokenizer, kept = build_student_from_teacher(teacher_dir, num_layers, first_layer)
    with atomic_output_dir(output_dir) as folder:
        save_checkpoint(student, tokenizer, folder)
    return kept


def set_dropout(model: torch.nn.Module, probability: float) -> int:
    """Set every dropout layer of `model` to `probability` (attention dropout too: transformers' attention reads
    its module's `p`), for training only: the model's config keeps its own values. Returns how many."""
    import torch

    layers = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    for layer in layers:
        layer.p = probability
    return len(layers)
