"""Digits-scale research studies on top of stereovoxel_ros; not installed on the robot (see research/README.md)."""
