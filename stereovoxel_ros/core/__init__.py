"""The robot core: pure algorithms and models (numpy/torch; never rclpy, never ros/, offline/ or tools/).

- ``geometry``: transforms, the Jackal's frames and footprint, the stereo camera model, the voxel grid;
- ``stereo``: stereo frames, left/right synchronisation, the newest-frame worker, classic stereo (SGBM/BM);
- ``occupancy``: the occupancy predictors, the octree decoder, obstacle grids, the local map, scoring,
  All-in-One pruning switch and its controller;
- ``detection``: the patch defense (candidates, regions, neutralisation, reuse cache);
- ``models``: one file per architecture, and the checkpoint file format;
- ``tracing``: the stage tracer, probes, window statistics, trace files;
- ``bags`` and ``messages``: rosbag2 reading/writing and ROS message conversion without rclpy;
- ``atomic_file`` and ``user_errors``: atomic writes and one-line user errors.
"""
