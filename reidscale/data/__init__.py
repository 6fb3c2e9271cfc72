"""Pre-training data: synthetic corpus, manifests, decoding (DALI / PyAV), multi-crop views, samplers."""
