"""ReID evaluation: dataset readers, distances, rank metrics (mAP/CMC/mINP), kNN search, re-ranking."""
