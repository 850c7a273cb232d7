"""Bad inputs met during training and validation: skipped, counted, logged, listed in the run folder.

A long run must not die on one corrupt video or truncated shard, nor hide it: every skip is logged
with a running count and appended as one JSON line to `<run_dir>/bad_inputs.jsonl` (appends of one
short line are atomic, so DataLoader workers and ranks can share the file). Evaluation does not
use this: there a bad input is an error naming the file.
"""

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

BAD_INPUTS_FILE = "bad_inputs.jsonl"


class BadInputs:
    """Counts and lists skipped inputs of one process (or DataLoader worker)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.count = 0

    def record(self, stage: str, error: BaseException) -> None:
        self.count += 1
        log.warning("skipped bad input (%d so far in this %s reader): %s", self.count, stage, error)
        if self.path is not None:
            line = json.dumps({"stage": stage, "error": str(error), "pid": os.getpid(), "time": time.time()})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line + "\n")


def read_bad_inputs(run_dir: str | os.PathLike) -> list[dict]:
    """The bad inputs a run skipped so far (empty when none)."""
    path = Path(run_dir) / BAD_INPUTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
