"""Why a ``torch.load`` of a checkpoint failed, in one short line (not torch's ``weights_only`` essay)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path


def describe_load_error(path: str | os.PathLike, err: BaseException) -> str:
    """A one-line reason ``torch.load(path)`` raised ``err``: empty, not a torch file, foreign objects, ..."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as stat_err:
        return f"cannot read it ({stat_err.strerror})"
    if size == 0:
        return "the file is empty (an interrupted save or copy?)"
    if not zipfile.is_zipfile(path):
        return f"not a torch checkpoint: {size} bytes that are not a torch zip archive (corrupt, truncated or another format)"
    text = " ".join(str(err).split())
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return "it holds Python objects a weights-only load refuses (not a checkpoint this package wrote)"
    return f"corrupt or truncated ({text[:200] or type(err).__name__})"
