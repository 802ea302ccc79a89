"""The cubic sparsity schedule of Zhu & Gupta (2017), "To prune, or not to prune"."""

from __future__ import annotations

from dataclasses import dataclass

from slimformer.errors import ConfigError


def cubic_sparsity(
    step: int,
    initial_sparsity: float,
    final_sparsity: float,
    start_step: int,
    num_steps: int,
    frequency: int = 1,
) -> float:
    """Target sparsity at training step `step`.

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 for t in {t0, t0 + dt, ..., t0 + n dt}, where
    t0 = `start_step`, n = `num_steps` (pruning updates) and dt = `frequency` (steps between updates).
    Between updates the sparsity of the last update holds; before t0 it is s_i, after t0 + n dt it is s_f.
    """
    if frequency < 1 or num_steps < 0:
        raise ConfigError(f"pruning frequency must be >= 1 and steps >= 0, got {frequency} and {num_steps}")
    if step < start_step:
        return initial_sparsity
    span = num_steps * frequency
    if span == 0:
        return final_sparsity
    # sparsity only moves at update steps, so round t down to the last update
    elapsed = min((step - start_step) // frequency * frequency, span)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - elapsed / span) ** 3


@dataclass
class CubicSchedule:
    """The schedule laid over one training run: pruning starts and ends at fractions of the total steps."""

    initial_sparsity: float  # s_i, sparsity at the first update
    final_sparsity: float  # s_f, reached at the last update and kept for the rest of training
    start_step: int  # t0
    num_steps: int  # n, number of pruning updates
    frequency: int  # dt, steps between updates

    @classmethod
    def over_training(
        cls,
        total_steps: int,
        initial_sparsity: float,
        final_sparsity: float,
        frequency: int,
        start_fraction: float = 0.1,
        end_fraction: float = 0.7,
    ) -> CubicSchedule:
        """Prune from `start_fraction` to `end_fraction` of the steps, then train at the final sparsity."""
        start = int(total_steps * start_fraction)
        end = max(start, int(total_steps * end_fraction))
        frequency = max(1, min(frequency, max(1, end - start)))
        return cls(initial_sparsity, final_sparsity, start, (end - start) // frequency, frequency)

    def sparsity(self, step: int) -> float:
        return cubic_sparsity(
            step, self.initial_sparsity, self.final_sparsity, self.start_step, self.num_steps, self.frequency
        )

    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed at `step` (t0, t0 + dt, ..., t0 + n dt)."""
        offset = step - self.start_step
        return 0 <= offset <= self.num_steps * self.frequency and offset % self.frequency == 0
