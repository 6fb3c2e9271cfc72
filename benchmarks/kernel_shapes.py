"""The memory-bank kernel shapes that ``bench_kernels.py`` and ``gpu_check.py`` time (no torch needed, so a
machine without torch can still print the plan).

N is the bank size. ``--scale full`` runs the target N; ``--scale cpu`` divides N by the per-shape divisor so
that a whole CPU run stays within minutes. ``selective_market`` is the selective-contrastive case:
N = 12,936 = the Market-1501 training set, k = P + N_neg = 507, D = 2048 + 8 × 256 selection columns.

=========================  ======  =====  ====  ===========  ====  ===========
shape                      op      B      D     N (target)   k     cpu divisor
=========================  ======  =====  ====  ===========  ====  ===========
b1024_d256_n1M             topk    1024   256   1,000,000    256   32
b4096_d2048_n4M            topk    4096   2048  4,000,000    1024  256
b256_d128_n10M             topk    256    128   10,000,000   64    64
selective_market           topk    64     4096  12,936       507   1
loss_b256_d256_n65536      loss    256    256   65,536       -     1
loss_b1024_d256_n131072    loss    1024   256   131,072      -     1
loss_selective_market      loss    64     4096  12,936       -     1
update_selective_market    update  64     4096  12,936       -     1
update_b1024_d256_n1M      update  1024   256   1,000,000    -     1
=========================  ======  =====  ====  ===========  ====  ===========

``loss``: forward + backward of the whole-bank contrastive loss. ``update``: one momentum update of B
distinct bank rows (B features, momentum 0.5, L2 renormalisation): the selective banks' 64 anchors over
Market-1501, and a MoCo-style 1024-row update of a 1M × 256 bank.
"""

from __future__ import annotations

from dataclasses import dataclass

OPS: tuple[str, ...] = ("topk", "loss", "update")


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: ``op`` is one of :data:`OPS`; ``k`` is unused (0) outside top-k."""

    op: str
    batch: int
    dim: int
    n_issue: int
    k: int
    cpu_divisor: int

    def n_run(self, scale: str) -> int:
        """Bank rows actually run at ``scale`` ("full" or "cpu")."""
        return self.n_issue if scale == "full" else max(1, self.n_issue // self.cpu_divisor)

    def describe(self) -> str:
        """One line, e.g. ``topk B=64 D=4096 N=12,936 k=507``."""
        k = f" k={self.k}" if self.op == "topk" else ""
        return f"{self.op} B={self.batch} D={self.dim} N={self.n_issue:,}{k}"


SHAPES: dict[str, Shape] = {
    "b1024_d256_n1M": Shape("topk", 1024, 256, 1_000_000, 256, 32),
    "b4096_d2048_n4M": Shape("topk", 4096, 2048, 4_000_000, 1024, 256),
    "b256_d128_n10M": Shape("topk", 256, 128, 10_000_000, 64, 64),
    "selective_market": Shape("topk", 64, 4096, 12_936, 507, 1),
    "loss_b256_d256_n65536": Shape("loss", 256, 256, 65_536, 0, 1),
    "loss_b1024_d256_n131072": Shape("loss", 1024, 256, 131_072, 0, 1),
    "loss_selective_market": Shape("loss", 64, 4096, 12_936, 0, 1),
    "update_selective_market": Shape("update", 64, 4096, 12_936, 0, 1),
    "update_b1024_d256_n1M": Shape("update", 1024, 256, 1_000_000, 0, 1),
}
