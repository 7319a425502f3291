"""Video object segmentation: the memory network, the per-video session, the segment job, and
region steps (regions/: SpVOS's sparse modes and Reuse-VOS's frame reuse, on one tracker)."""
