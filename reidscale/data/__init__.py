"""Data: benchmark readers (datasets), synthetic corpus, manifests, decoding (DALI / PyAV), multi-crop views,
samplers, and the training sets built from them."""
