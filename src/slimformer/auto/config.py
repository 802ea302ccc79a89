"""Options of `slimformer auto`: one budget, the accuracy it may cost, the search space and how to run it.

The fields are the CLI (`slimformer auto --help`): each is written once, with its help text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from slimformer.config import StageConfig, option
from slimformer.errors import ConfigError
from slimformer.studies import DistillRanges

# each model's turn in the turn-about timing lasts at least this long, its queries repeated. A 40-query turn of a
# 0.06 ms model lasts less than a scheduler slice: under a CPU hog whole turns ran 1.7x slow, and a model timed
# against itself read 0.56-0.62x in 2 of 22 screens; with turns of at least 0.1 s, 35 of 35 read 0.78-1.39x (Ice
# Lake, 2 cores; BENCHMARKS.md, "slimformer auto")
TIMING_TURN_S = 0.1

QUANTIZATION_CHOICES = ("dynamic", "static")
QUICK_TRIALS = 3


@dataclass
class AutoConfig(DistillRanges, StageConfig):
    """A budget, an accuracy tolerance and the space `slimformer auto` searches to meet them."""

    # the budget: give exactly one
    max_latency_ms: float | None = option(
        None, "Budget: batch-1 p50 at most this many ms on this CPU (tokenizing too)."
    )
    min_speedup: float | None = option(None, "Budget: at least this many times lower p50 than the teacher (same run).")
    max_size_mb: float | None = option(None, "Budget: model files at most this many MB on disk.")
    max_accuracy_drop: float = option(0.5, "Accuracy may fall at most this many points below the teacher's.")
    # how long
    trials: int = option(12, "Trained trials the study should hold (shapes screened out before training do not count).")
    time_budget: float | None = option(None, "Minutes after which this process starts no new trial.")
    max_screened: int = option(40, "Stop after this many shapes in a row were screened out (the budget is too tight).")
    # where, and by how many
    storage: str | None = option(
        None, "Optuna storage URL (default: sqlite:///OUTPUT/study.db); postgresql://... joins workers"
    )
    study_name: str | None = option(None, "Default: derived from the teacher, the data and the budget.")
    workers: int = option(1, "Local worker processes joining the study (they share the cores).")
    work_dir: str | None = option(
        None, "Stage artefacts and teacher logits, on a path every worker sees (default: OUTPUT/work)."
    )
    heartbeat_seconds: int = option(30, "Workers beat this often; a trial silent for 3 beats is failed and run again.")
    # the search space
    student: str | None = option(
        None,
        "Model whose layers the students start from (default: the teacher's own; 'default' = the packaged "
        "MiniLM-L6). One without a head for the data is first distilled from the teacher at full depth (cached). "
        "With another tokenizer, students learn from the teacher's logits alone.",
    )
    layers_choices: tuple[int, ...] | None = option(
        None,
        "Student depths (default: 1 .. teacher depth - 1, or 1 .. --student's depth); 0 = the static student "
        "(slimformer static).",
    )
    first_kept_layer: int = option(
        1, "Students keep K layers evenly spaced from this layer of the base to the last (as the packaged recipe)."
    )
    heads_fractions: tuple[float, ...] = option((0.0, 0.25, 0.5), "Fractions of attention heads removed per layer.")
    ffn_fractions: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75), "Fractions of FFN neurons removed per layer.")
    vocab_clusters: tuple[int, ...] = option(
        (0, 64), "Vocabulary pruning as the recipe's (sign rows): 0 = off, else its shared k-means rows (recipe: 64)."
    )
    quantization: tuple[str, ...] = option(QUANTIZATION_CHOICES, "INT8 methods: dynamic, static (calibrated).")
    search_per_channel: bool = option(True, "Search per-tensor weight scales too (else always per channel).")
    threads: tuple[int, ...] | None = option(
        None, "Intra-op thread counts searched (default: 1 .. cores); one fixes it."
    )
    # the distillation ranges (epochs, alpha, temperature, learning rate) come from DistillRanges
    attention_weights: tuple[float, ...] = option((0.0,), "MiniLMv2 attention-relation loss weights tried (0 = off).")
    hidden_weights: tuple[float, ...] = option((0.0,), "Hidden-state loss weights tried (0 = off).")
    augment_choices: tuple[str, ...] = option(
        ("", "mix"), "Transfer data tried: '' (none) or augmentations such as 'mix' or 'mask,mix' (slimformer distill)."
    )
    # measuring
    halving: int = option(
        3,
        "Successive halving within a depth: at epochs 2, 2N, ... a trial goes on only while its validation accuracy "
        "ranks in the top 1/N of the trials of its depth that reached that epoch (once N have); 0 = off.",
    )
    latency_queries: int = option(200, "Validation queries timed at batch 1 per candidate.")
    timing_turn_s: float = option(
        TIMING_TURN_S,
        "Each model's turn in the turn-about timing lasts at least this many seconds (its queries repeated).",
    )
    screen_margin: float = option(
        1.15, "A shape is screened out only when even its fastest plausible p50 misses the budget by this factor."
    )
    calibration_samples: int = option(128, "Training rows the static INT8 ranges are calibrated on.")
    final_candidates: int = option(4, "Pareto-front models benchmarked on test at the end, the pick included.")
    batch_size: int = option(32, "Training batch size.")
    precision: str = option(
        "auto", "Distillation arithmetic: fp32, bf16, auto (bf16 where the CPU computes it natively)"
    )
    max_length: int | None = option(None, "Truncate texts to this many tokens (default: the teacher's, else 128).")
    seed: int = option(42, "Seed of the sampler, the training and the data subsets.")
    validation_fraction: float = option(
        0.1, "Share of the training rows held out for validation when the data has no validation split."
    )
    max_train_samples: int | None = option(None, "Subsample the training split.")
    max_eval_samples: int | None = option(None, "Subsample validation and test.")

    produces_model: ClassVar[bool] = True

    def quick(self) -> AutoConfig:
        return replace(
            self,
            trials=min(self.trials, QUICK_TRIALS),
            epochs_range=(1, 1),
            latency_queries=min(self.latency_queries, 50),
            final_candidates=min(self.final_candidates, 2),
        )

    def validate(self) -> None:
        budgets = [b for b in (self.max_latency_ms, self.min_speedup, self.max_size_mb) if b is not None]
        if len(budgets) != 1:
            raise ConfigError("give exactly one budget: --max-latency-ms X, --min-speedup S or --max-size-mb M")
        if budgets[0] <= 0:
            raise ConfigError(f"the budget must be > 0, got {budgets[0]}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise ConfigError(f"max accuracy drop is in points (0-100), got {self.max_accuracy_drop}")
        if self.trials < 1 or self.workers < 1 or self.max_screened < 1 or self.final_candidates < 1:
            raise ConfigError("trials, workers, max screened and final candidates must be >= 1")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"time budget is in minutes and must be > 0, got {self.time_budget}")
        if self.timing_turn_s < 0:
            raise ConfigError(f"timing turn seconds must be >= 0, got {self.timing_turn_s}")
        if self.heartbeat_seconds < 1:
            raise ConfigError(f"heartbeat seconds must be >= 1, got {self.heartbeat_seconds}")
        self._validate_space()

    def _validate_space(self) -> None:
        if self.layers_choices is not None and (not self.layers_choices or min(self.layers_choices) < 0):
            raise ConfigError("layers choices must be >= 0 (0 = the static student)")
        if self.first_kept_layer < 0:
            raise ConfigError(f"the first kept layer must be >= 0, got {self.first_kept_layer}")
        for name in ("attention_weights", "hidden_weights"):
            if not getattr(self, name) or min(getattr(self, name)) < 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 0, got {list(getattr(self, name))}")
        from slimformer.transfer import parse_augmentations

        for choice in self.augment_choices:
            parse_augmentations(choice)
        for name in ("heads_fractions", "ffn_fractions"):
            values = getattr(self, name)
            if not values or not all(0 <= v < 1 for v in values):
                raise ConfigError(f"{name.replace('_', ' ')} must be in [0, 1), got {list(values)}")
        if not self.vocab_clusters or min(self.vocab_clusters) < 0:
            raise ConfigError("vocab clusters must be >= 0 (0 = off)")
        from slimformer.training import check_precision

        check_precision(self.precision)
        if not self.quantization or set(self.quantization) - set(QUANTIZATION_CHOICES):
            raise ConfigError(f"quantization must be among {', '.join(QUANTIZATION_CHOICES)}")
        if self.threads is not None and (not self.threads or min(self.threads) < 1):
            raise ConfigError("threads must be >= 1")
        self.validate_ranges()
        if not 0 < self.validation_fraction < 0.5:
            raise ConfigError(f"validation fraction must be in (0, 0.5), got {self.validation_fraction}")
        if self.halving == 1 or self.halving < 0:
            raise ConfigError(f"halving keeps the top 1/N: N must be >= 2, or 0 for off; got {self.halving}")
        if self.screen_margin < 1:
            raise ConfigError(f"screen margin must be >= 1, got {self.screen_margin}")

    def latency_limit_ms(self, teacher_p50_ms: float) -> float | None:
        """The p50 a candidate may take: --max-latency-ms, or the teacher's p50 over --min-speedup."""
        if self.max_latency_ms is not None:
            return self.max_latency_ms
        return teacher_p50_ms / self.min_speedup if self.min_speedup is not None else None

    @property
    def budget_limit(self) -> tuple[str, str]:
        """The budget's figure (a trial attribute: p50_ms, speedup or size_mb) and its limit in words ('≤ 1 ms')."""
        if self.max_latency_ms is not None:
            return "p50_ms", f"≤ {self.max_latency_ms:g} ms"
        if self.min_speedup is not None:
            return "speedup", f"≥ {self.min_speedup:g}x"
        return "size_mb", f"≤ {self.max_size_mb:g} MB"

    @property
    def budget_text(self) -> str:
        """The budget in words, e.g. 'p50 ≤ 1 ms, accuracy drop ≤ 0.5 points'."""
        figure, limit = self.budget_limit
        budget = {
            "p50_ms": f"p50 {limit}",
            "speedup": f"{limit} lower p50 than the teacher",
            "size_mb": f"size {limit}",
        }
        return f"{budget[figure]}, accuracy drop ≤ {self.max_accuracy_drop:g} points"
