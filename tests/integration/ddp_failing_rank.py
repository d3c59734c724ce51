"""torchrun entry point for a test: rank 1 dies before training, as a crashed worker would.

Run as `torchrun ... -m tests.integration.ddp_failing_rank train <experiment>`; every other
rank runs the real CLI and would wait for rank 1 in the process group forever if the
launcher did not tear the job down.
"""

from __future__ import annotations

import os
import sys

from ml_playground.cli import main

if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        sys.exit("rank 1: simulated worker failure (out of memory)")
    sys.exit(main())
