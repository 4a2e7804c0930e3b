"""The saved-frame bookkeeping shared by the simulators that record every `save_every` steps."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SavedFrames"]


class SavedFrames:
    """Mixin for a frozen simulator config with fields ``n_steps``, ``save_every``, ``dt`` and
    ``frames`` (None: keep every saved frame; else the saved frames to keep)."""

    def _check_frames(self) -> None:
        """Normalise ``frames`` to a tuple of ints and check it (call from ``__post_init__``)."""
        if self.frames is not None:
            object.__setattr__(self, "frames", tuple(int(f) for f in self.frames))
            bad = [f for f in self.frames if not 0 <= f < self.n_saved]
            if bad or not self.frames:
                raise ValueError(f"frames must be a non-empty subset of 0..{self.n_saved - 1}")

    @property
    def n_saved(self) -> int:
        """Frames recorded: steps ``t = 0 … n_steps − 1`` with ``t % save_every == 0``."""
        return math.ceil(self.n_steps / self.save_every)

    @property
    def kept_frames(self) -> tuple[int, ...]:
        return tuple(range(self.n_saved)) if self.frames is None else self.frames

    @property
    def ts(self) -> np.ndarray:
        """The time of every kept frame: frame ``k`` is at ``dt·(save_every·k + 1)``."""
        return self.dt * (self.save_every * np.asarray(self.kept_frames) + 1)
