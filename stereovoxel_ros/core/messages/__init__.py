"""ROS message ↔ numpy conversions; pure numpy over duck-typed rclpy or rosbags messages (no rclpy import)."""
