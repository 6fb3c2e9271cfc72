"""Row-sharded banks over the ranks (memory banks, queues): the row partition and the collectives a sharded
bank needs. Method-independent: used by the selective-contrastive banks and open to any other method."""

from reidscale.sharded.rows import RowShards, fetch_rows, gather_batches, merge_sharded_topk

__all__ = ["RowShards", "fetch_rows", "gather_batches", "merge_sharded_topk"]
