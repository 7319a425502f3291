"""Video object segmentation: the memory network, the per-video session, the segment job, and
its two modes, reuse/ (Reuse-VOS) and sparse/ (SpVOS)."""
