"""Trivial predictions that a twin must beat, scored in the same run and with the same code as the models.

"Nothing moves" repeats the last context frame for every predicted step. It is the floor: pixel metrics
flatter it (most pixels do not move), so compare against it on the moving pixels, on pose error and on
verdict agreement (a static prediction never sees the arm enter a keep-out region).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NOTHING_MOVES = "nothing_moves"


def nothing_moves(context: np.ndarray, num_steps: int) -> np.ndarray:
    """context uint8 [C, H, W, 3] (or [H, W, 3]) -> [num_steps, H, W, 3]: the last context frame repeated."""
    last = context if context.ndim == 3 else context[-1]
    return np.repeat(np.asarray(last, np.uint8)[None], num_steps, axis=0)


# name -> (context, num_steps) -> predicted frames; every baseline is scored like a model.
BASELINES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {NOTHING_MOVES: nothing_moves}
