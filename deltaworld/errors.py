"""User-facing failures of the commands: one or two lines naming the file and what to do, no
traceback. `DELTAWORLD_DEBUG=1` (or Hydra's `HYDRA_FULL_ERROR=1`) shows the traceback instead."""

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import InstantiationException

from deltaworld.data.clips import BadClipError
from deltaworld.data.frame_datasets import DatasetFileError
from deltaworld.data.token_cache import StaleCacheError
from deltaworld.data.video import VideoDecodeError
from deltaworld.tokenizer.backbone import BackboneCheckpointError
from deltaworld.tokenizer.run_folder import RunFolderError

# what bad input raises: files that are missing, damaged or of another kind, settings that do not
# fit; each message names the file or the setting. Anything else is a bug and keeps its traceback.
USER_ERRORS = (
    OSError,
    ValueError,
    BadClipError,
    DatasetFileError,
    StaleCacheError,
    VideoDecodeError,
    BackboneCheckpointError,
    RunFolderError,
)

F = TypeVar("F", bound=Callable)


def debugging() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("DELTAWORLD_DEBUG", "HYDRA_FULL_ERROR"))


def user_errors(command: F) -> F:
    """Run a command's main; a user error becomes `deltaworld: error: <message>` and exit status 2."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (*USER_ERRORS, InstantiationException) as error:
            # Hydra wraps what a constructor raised (a module loading its tokenizer_ckpt, say)
            cause = error.__cause__ if isinstance(error, InstantiationException) else error
            if debugging() or not isinstance(cause, USER_ERRORS):
                raise
            print(f"deltaworld: error: {cause}\n(DELTAWORLD_DEBUG=1 shows the traceback)", file=sys.stderr)
            raise SystemExit(2) from None

    return run
