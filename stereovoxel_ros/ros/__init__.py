"""The ROS 2 layer: QoS, bag player/recorder, stack runner and nodes; thin wrappers over the pure code."""
