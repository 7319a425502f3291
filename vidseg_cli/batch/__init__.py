"""vidseg batch: many videos, on this machine or a Ray cluster."""
