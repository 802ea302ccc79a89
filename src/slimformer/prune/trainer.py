"""The Trainer every pruning method trains with: cross-entropy, or knowledge distillation from a teacher."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from slimformer.distill import distillation_loss


class PruningTrainer(Trainer):
    """A Trainer whose loss distils from `teacher` (a classifier over the same labels) when one is given."""

    def __init__(
        self,
        *args: Any,
        teacher: torch.nn.Module | None = None,
        alpha: float = 0.5,
        temperature: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().to(self.args.device) if teacher is not None else None
        self.alpha = alpha
        self.temperature = temperature

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if self.teacher is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels", None)
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.alpha, self.temperature)
        inputs["labels"] = labels  # the evaluation loop reads labels from the same dict
        return (loss, outputs) if return_outputs else loss
