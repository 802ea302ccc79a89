"""Intermediate-layer distillation losses (TinyBERT, MiniLMv2): the student's internals learn the teacher's.

Each is a weight in :class:`LayerLosses` (0 = off), added to the logit loss of
:class:`~slimformer.distillation.DistillationTrainer` on training batches by a :class:`LayerDistiller`, which
runs the teacher live on the student's batch (the teacher's logits stay cached). They compare the two models token
by token, so the student must use the teacher's tokenizer. Torch is imported only where a loss is computed, so
the configs that name these losses load without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORED_LABEL = -100  # transfer rows (unlabelled texts, augmentations): no hard label, teacher targets only
MASKED_SCORE = -1e4  # a padded key's relation score: exp() is exactly 0 in float32, differences stay finite
LAYER_MAPS = ("uniform", "last")


@dataclass
class LayerLosses:
    """Weights of the intermediate-layer losses (0 = off) and which layers they match.

    - `hidden`: MSE between each student layer's output (through a learned projection where the widths differ)
      and its mapped teacher layer's, averaged over the mapped layers and the real (unpadded) tokens;
    - `attention`: MiniLMv2's self-attention relations, KL(teacher || student) of softmax(X X^T / sqrt(d)) for X
      = queries, keys and values split into `relation_heads` heads, of the student's last layer against teacher
      layer `attention_layer`; independent of the head count and width, so they survive head and FFN slicing;
    - `embedding`: MSE between the embedding outputs (projected likewise).
    """

    hidden: float = 0.0
    attention: float = 0.0
    embedding: float = 0.0
    layer_map: str = "uniform"  # uniform: student layer i -> teacher layer ceil(i * T / S); last: the last S
    attention_layer: int = -1  # the teacher layer whose relations the student's last layer learns
    relation_heads: int = 12

    @property
    def active(self) -> bool:
        return self.hidden > 0 or self.attention > 0 or self.embedding > 0


def layer_map(student_layers: int, teacher_layers: int, kind: str = "uniform") -> list[int]:
    """The teacher layer (1-based, as in `hidden_states`) each student layer 1..S learns from.

    uniform (TinyBERT): ceil(i * T / S), so the last student layer learns the last teacher layer; last: the
    teacher's last S layers, T - S + i.
    """
    if kind not in LAYER_MAPS:
        raise ValueError(f"layer map must be one of {', '.join(LAYER_MAPS)}, got {kind!r}")
    if kind == "last":
        return [teacher_layers - student_layers + i for i in range(1, student_layers + 1)]
    return [-(-i * teacher_layers // student_layers) for i in range(1, student_layers + 1)]


def hidden_state_loss(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor, projection: Any = None
) -> torch.Tensor:
    """Mean over real tokens of the per-token mean squared error between `projection(student)` and `teacher`
    (both (batch, tokens, width); the mask is (batch, tokens), 1 for real tokens)."""
    if projection is not None:
        student = projection(student)
    squared = (student.float() - teacher.float()).pow(2).mean(dim=-1)
    return squared[attention_mask.bool()].mean()


def relation_log_probs(states: torch.Tensor, attention_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """log softmax(X_r X_r^T / sqrt(d_r)) per relation head r: (batch, heads, tokens, tokens), padded keys out."""
    batch, tokens, width = states.shape
    if width % heads:
        raise ValueError(f"relation heads ({heads}) must divide the query/key/value width ({width})")
    size = width // heads
    split = states.float().view(batch, tokens, heads, size).transpose(1, 2)
    scores = split @ split.transpose(-1, -2) / size**0.5
    keys = attention_mask.bool()[:, None, None, :]
    return scores.masked_fill(~keys, MASKED_SCORE).log_softmax(dim=-1)


def attention_relation_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], attention_mask: torch.Tensor, heads: int
) -> torch.Tensor:
    """MiniLMv2: the sum over X in (queries, keys, values) of KL(teacher || student) between their relations,
    each a mean over relation heads and real query tokens."""
    total = 0.0
    queries = attention_mask.bool()[:, None, :]
    for student_states, teacher_states in zip(student, teacher, strict=True):
        student_log = relation_log_probs(student_states, attention_mask, heads)
        teacher_log = relation_log_probs(teacher_states, attention_mask, heads)
        kl = (teacher_log.exp() * (teacher_log - student_log)).sum(dim=-1)  # (batch, heads, tokens)
        total = total + kl[queries.expand_as(kl)].mean()
    return total


class QKVRecorder:
    """Forward hooks that keep the query, key and value projections' outputs of one encoder layer."""

    def __init__(self, model: Any, layer_index: int, training_only: bool = False) -> None:
        from slimformer.families import family_of, submodule

        self.training_only = training_only  # the student: nothing kept from evaluation batches
        family = family_of(model)
        layer = submodule(model, family.layers)[layer_index]
        attention = submodule(layer, family.attention)
        self.chunks = family.qkv_chunks
        self.outputs: list[torch.Tensor] = []
        for name in family.qkv:
            submodule(attention, name).register_forward_hook(self._keep)

    def _keep(self, module: Any, args: Any, output: torch.Tensor) -> None:
        if self.training_only and not module.training:
            return
        self.outputs.extend(output.chunk(self.chunks, dim=-1) if self.chunks > 1 else [output])

    def take(self) -> list[torch.Tensor]:
        """The queries, keys and values recorded since the last call (and forget them)."""
        outputs, self.outputs = self.outputs[-3:], []
        return outputs


class LayerDistiller:
    """The teacher side of the intermediate-layer losses: runs the teacher live on the student's batch and adds
    the weighted losses of :class:`LayerLosses`. Its projection (student width -> teacher width, one Linear shared
    by the embedding and every layer, as TinyBERT's W_h) trains with the student but is not part of it, so it is
    never saved."""

    def __init__(self, teacher: Any, student: Any, losses: LayerLosses) -> None:
        import torch

        self.teacher = teacher.eval().requires_grad_(False)
        self.losses = losses
        student_width, teacher_width = student.config.hidden_size, teacher.config.hidden_size
        self.projection = torch.nn.Linear(student_width, teacher_width) if student_width != teacher_width else None
        student_depth = student.config.num_hidden_layers
        teacher_depth = teacher.config.num_hidden_layers
        self.layers = layer_map(student_depth, teacher_depth, losses.layer_map)
        self.student_qkv = self.teacher_qkv = None
        if losses.attention > 0:
            self.student_qkv = QKVRecorder(student, -1, training_only=True)
            self.teacher_qkv = QKVRecorder(teacher, losses.attention_layer)

    @property
    def wants_hidden_states(self) -> bool:
        return self.losses.hidden > 0 or self.losses.embedding > 0

    def parameters(self) -> list[Any]:
        """What the optimizer trains besides the student (the projection, when there is one)."""
        return list(self.projection.parameters()) if self.projection is not None else []

    def loss(self, inputs: dict[str, Any], student_outputs: Any) -> torch.Tensor:
        """The weighted intermediate-layer losses of one training batch (the student has just run on it)."""
        import torch

        if self.projection is not None:
            self.projection.to(student_outputs.logits.device)
        self.teacher.to(student_outputs.logits.device)
        student_qkv = self.student_qkv.take() if self.student_qkv else []
        with torch.no_grad():
            teacher_outputs = self.teacher(**inputs, output_hidden_states=self.wants_hidden_states)
        mask = inputs["attention_mask"]
        total = student_outputs.logits.new_zeros(())
        losses = self.losses
        if losses.embedding > 0:
            total = total + losses.embedding * hidden_state_loss(
                student_outputs.hidden_states[0], teacher_outputs.hidden_states[0], mask, self.projection
            )
        if losses.hidden > 0:
            per_layer = [
                hidden_state_loss(
                    student_outputs.hidden_states[i], teacher_outputs.hidden_states[t], mask, self.projection
                )
                for i, t in enumerate(self.layers, start=1)
            ]
            total = total + losses.hidden * torch.stack(per_layer).mean()
        if losses.attention > 0:
            teacher_qkv = self.teacher_qkv.take()
            total = total + losses.attention * attention_relation_loss(
                student_qkv, teacher_qkv, mask, losses.relation_heads
            )
        return total
