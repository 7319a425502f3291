"""vidseg: video segmentation with a streaming memory engine."""

__version__ = "0.1.0"
