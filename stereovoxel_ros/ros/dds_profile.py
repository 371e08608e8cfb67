"""The Fast DDS profile of ``config/fastdds_profile.xml``: large shared-memory segments for camera images.

Entry points call :func:`use_fastdds_profile` before ``rclpy.init``; it sets ``FASTDDS_DEFAULT_PROFILES_FILE``
for this process (and the processes it starts) unless the user already chose a profile or another RMW. Launch
files add :func:`fastdds_profile_actions`, the same for every process of the launch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launch import Action

PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
PROFILE_RELATIVE = "config/fastdds_profile.xml"


class DdsProfileError(OSError):
    """The shipped Fast DDS profile is missing from the installed package."""


def fastdds_profile_path() -> Path:
    """``config/fastdds_profile.xml`` of the installed package or of this source tree."""
    # imported here, not at the top: stack_runner imports this module
    from stereovoxel_ros.ros.stack_runner import package_file

    path = package_file(PROFILE_RELATIVE)
    if not path.is_file():
        raise DdsProfileError(
            f"{path}: the stereovoxel_ros Fast DDS profile is missing (reinstall the package)"
        )
    return path


def use_fastdds_profile(
    log: Callable[[str], None] | None = print, environ: MutableMapping[str, str] | None = None
) -> Path | None:
    """Point Fast DDS at the shipped profile unless a profile is already set or the RMW is not Fast DDS.

    Returns the profile now in use by this process (None: not Fast DDS, or the file is missing) and logs
    one line saying which profile applies and why.
    """
    env = os.environ if environ is None else environ
    rmw = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if not rmw.startswith("rmw_fastrtps"):
        return None
    for name in PROFILE_VARIABLES:
        if env.get(name):
            if log is not None:
                log(f"Fast DDS profile from {name}={env[name]} (the shipped one is not used)")
            return Path(env[name])
    try:
        path = fastdds_profile_path()
    except DdsProfileError as err:
        if log is not None:
            log(f"{err}; images above 512 KiB may be lost between processes")
        return None
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    if log is not None:
        log(
            f"Fast DDS profile {path} (shared-memory transport for full-size images; set "
            "FASTDDS_DEFAULT_PROFILES_FILE to use another)"
        )
    return path


def launch_profile_choice(share: str, environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """For a launch: the profile of the package share to set (None when the environment already names one) and
    the line to log."""
    env = os.environ if environ is None else environ
    chosen = next((env[v] for v in PROFILE_VARIABLES if env.get(v)), None)
    if chosen:
        return None, f"Fast DDS profile from the environment: {chosen}"
    profile = os.path.join(share, PROFILE_RELATIVE)
    return profile, f"Fast DDS profile {profile} (set FASTDDS_DEFAULT_PROFILES_FILE to use another)"


def fastdds_profile_actions(share: str) -> list[Action]:
    """Launch actions that use ``config/fastdds_profile.xml`` of ``share`` (large shared-memory segments for
    full-size images) for every process of the launch, camera drivers included, unless a profile is set."""
    from launch.actions import LogInfo, SetEnvironmentVariable

    profile, line = launch_profile_choice(share)
    use = [] if profile is None else [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile)]
    return [*use, LogInfo(msg=line)]
