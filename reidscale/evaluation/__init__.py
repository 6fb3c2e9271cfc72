"""ReID evaluation: rank metrics (mAP/CMC/mINP), re-ranking, feature extraction, evaluation during training.

The benchmark readers live with the data, in ``reidscale.data.datasets``; distances and the neighbour
search in ``reidscale.neighbours``.
"""
