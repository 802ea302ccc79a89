"""Students built from a fine-tuned teacher's own layers: the depth is cut, everything else is copied.

What differs per encoder family (where the layer stack lives, which config fields follow the depth) is kept
here, so distillation and the search build students the same way for every family.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from slimformer.artifacts import atomic_output_dir
from slimformer.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Indices of the teacher layers a `student_layers`-deep student keeps: evenly spaced from the first to
    the last layer (6 -> 3 keeps [0, 2, 5]; 12 -> 6 keeps [0, 2, 4, 7, 9, 11]; K = 1 keeps the last one).

    The last layer is always kept because the teacher's pooler and classifier head were fine-tuned on its
    output; DistilBERT's every-other-layer [0, 2, 4] drops it (it initialised from a pre-trained, not a
    fine-tuned, model).
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"student layers must be in 1..{teacher_layers} (the teacher's depth), got {student_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def build_student_from_teacher(
    teacher_dir: str | Path, num_layers: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]:
    """A copy of the teacher classifier keeping `num_layers` evenly spaced encoder layers (in memory).

    Returns (student, tokenizer, kept_layer_indices); embeddings, pooler and classifier head are copied.
    """
    import re

    from torch import nn
    from transformers import AutoModelForSequenceClassification

    from slimformer.models import load_classifier, load_tokenizer

    teacher = load_classifier(teacher_dir)
    depth = teacher.config.num_hidden_layers
    kept = evenly_spaced_layers(depth, num_layers)
    # the encoder's layer stack is the ModuleList as long as the model is deep (encoder.layer in BERT)
    stacks = [name for name, m in teacher.named_modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise ModelError(f"cannot find the encoder layers of {teacher_dir} ({type(teacher).__name__})")
    layer_key = re.compile(rf"^{re.escape(stacks[0])}\.(\d+)\.(.*)$")
    new_index = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, tensor in teacher.state_dict().items():
        match = layer_key.match(key)
        if match is None:
            state[key] = tensor
        elif int(match.group(1)) in new_index:
            state[f"{stacks[0]}.{new_index[int(match.group(1))]}.{match.group(2)}"] = tensor
    config = teacher.config
    config.num_hidden_layers = num_layers
    student = AutoModelForSequenceClassification.from_config(config)
    student.load_state_dict(state, strict=True)
    return student, load_tokenizer(teacher_dir), kept


def student_from_teacher(teacher_dir: str | Path, num_layers: int, output_dir: str | Path) -> list[int]:
    """Save a `num_layers`-deep student made from the teacher (see :func:`build_student_from_teacher`) as an
    HF checkpoint with `num_hidden_layers = num_layers`. Returns the kept teacher layer indices."""
    student, tokenizer, kept = build_student_from_teacher(teacher_dir, num_layers)
    with atomic_output_dir(output_dir) as folder:
        student.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return kept
