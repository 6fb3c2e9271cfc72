"""Triton building blocks shared by the memory-bank kernels."""

# Triton kernels name their compile-time (tl.constexpr) parameters in capitals, by convention.
# ruff: noqa: N803

import triton
import triton.language as tl


@triton.jit
def tile_dot(
    q_ptr, m_ptr, rows, cols, n_batch, n_rows, dim, sq0, sq1, sm0, sm1, BLOCK_D: tl.constexpr, NATIVE
):
    """[BLOCK_B, BLOCK_N] fp32 dot products of query ``rows`` with bank ``cols`` (int64 offsets)."""
    acc = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    rows64, cols64 = rows.to(tl.int64), cols.to(tl.int64)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        q = tl.load(
            q_ptr + rows64[:, None] * sq0 + offs_d[None, :] * sq1,
            mask=(rows[:, None] < n_batch) & (offs_d[None, :] < dim),
            other=0.0,
        )
        m = tl.load(
            m_ptr + cols64[None, :] * sm0 + offs_d[:, None] * sm1,
            mask=(cols[None, :] < n_rows) & (offs_d[:, None] < dim),
            other=0.0,
        )
        if NATIVE:
            acc = tl.dot(q, m, acc)
        else:
            acc = tl.dot(q.to(tl.float32), m.to(tl.float32), acc, input_precision="ieee")
    return acc
