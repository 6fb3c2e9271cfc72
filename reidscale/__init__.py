"""reidscale: distributed, large-scale person re-identification pre-training."""

__version__ = "0.1.0"
