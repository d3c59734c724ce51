"""torchrun entry point for tests: rank 1 dies, as a crashed worker would.

Run as `torchrun ... -m tests.integration.ddp_failing_rank train <experiment>`. By default
rank 1 dies before training starts. With FAIL_AT_BATCH=N in the environment it dies when
it draws its N-th batch instead: in the middle of training, while the other ranks wait
for its gradients in an all-reduce. Every other rank runs the real CLI and would wait for
rank 1 forever if the launcher did not tear the job down.
"""

from __future__ import annotations

import os
import sys

import torch

from ml_playground.cli import main
from ml_playground.data.batches import BatchSampler

FAILURE = "rank 1: simulated worker failure (out of memory)"


def fail_at_batch(count: int) -> None:
    """Make this process exit with FAILURE when it asks for its `count`-th batch."""
    draw = BatchSampler.next_batch
    drawn = 0

    def next_batch(self: BatchSampler) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal drawn
        drawn += 1
        if drawn >= count:
            sys.exit(FAILURE)
        return draw(self)

    BatchSampler.next_batch = next_batch  # type: ignore[method-assign]  # a test's fault injection


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        at_batch = os.environ.get("FAIL_AT_BATCH")
        if at_batch is None:
            sys.exit(FAILURE)
        fail_at_batch(int(at_batch))
    sys.exit(main())
