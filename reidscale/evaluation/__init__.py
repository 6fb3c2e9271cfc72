"""ReID evaluation: distances, rank metrics (mAP/CMC/mINP), kNN search, re-ranking.

The benchmark readers live with the data, in ``reidscale.data.datasets``.
"""
