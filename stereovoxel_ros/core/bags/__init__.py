"""rosbag2 reading and writing with rosbags (pure Python; never imports rclpy)."""
