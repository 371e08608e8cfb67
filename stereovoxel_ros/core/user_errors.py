"""How every command reports bad input: one line naming the problem, never a traceback, and what it recorded."""

from __future__ import annotations

import argparse
import shlex


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports bad input rather than a bug: a project error class (stereovoxel_ros or a
    ``stereovoxel_*`` package built on it, such as the research package), or a file the OS refused."""
    return type(err).__module__.startswith("stereovoxel_") or isinstance(err, OSError)


def describe_error(err: BaseException) -> str:
    """``err`` as one line: its message, or its class name when the message is empty."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(str(err).split())
    return text or type(err).__name__


def recorded_command(args: argparse.Namespace) -> str:
    """The ``stereovoxel ...`` line that cards and reports record: the argv ``cli.main`` parsed, not ``sys.argv``
    (``main(argv)`` may be called from code or a test, where ``sys.argv`` is pytest's)."""
    return "stereovoxel " + shlex.join(getattr(args, "argv", None) or [])
