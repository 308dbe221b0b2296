"""Where this process stands in a launch (torchrun, accelerate launch), read from the environment without
importing torch: the runner asks it of every training stage, including the ones a re-run skips.

    from components.kit.processes import world_size
    world_size()  # 1 outside a launch
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes in this launch (WORLD_SIZE, set by torchrun and accelerate launch; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the one process that writes output files and logs to the tracker."""
    return rank() == 0
