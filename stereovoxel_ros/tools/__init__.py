"""Tools that drive a ROS graph: replay, the demo and the bag commands (they may use the core and the nodes)."""
