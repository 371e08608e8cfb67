"""Stereo input: frames, left/right synchronisation, the newest-frame worker and the classic stereo backend."""
