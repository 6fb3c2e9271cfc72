"""The exact chunked top-k against an independent brute force (the whole row in numpy, lexsort)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reidscale.kernels.chunked_topk import RunningTopK, best_of_chunk, sort_by_score_then_index


def brute_topk(values: torch.Tensor, k: int, largest: bool, keep: torch.Tensor | None):
    """(values [B, k] float64, indices [B, k]): each row's kept entries by (value, index), padded."""
    full = values.double().numpy()
    keep_np = np.ones(full.shape, bool) if keep is None else keep.numpy()
    pad = -np.inf if largest else np.inf
    out_v, out_i = np.full((full.shape[0], k), pad), np.full((full.shape[0], k), -1, dtype=np.int64)
    for row in range(full.shape[0]):
        columns = np.flatnonzero(keep_np[row])
        key = -full[row, columns] if largest else full[row, columns]
        chosen = columns[np.lexsort((columns, key))][:k]
        out_v[row, : len(chosen)], out_i[row, : len(chosen)] = full[row, chosen], chosen
    return out_v, out_i


def streamed(values: torch.Tensor, k: int, largest: bool, keep: torch.Tensor | None, chunk: int):
    running = RunningTopK(values.shape[0], k, largest=largest, dtype=values.dtype, device=values.device)
    for start in range(0, values.shape[1], chunk):
        part = None if keep is None else keep[:, start : start + chunk]
        running.add(values[:, start : start + chunk], keep=part)
    return running.result()


def tied_values(seed: int, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Small integers: many exact ties within and across chunks."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (rows, cols), generator=gen).to(dtype)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("with_keep", [False, True])
@pytest.mark.parametrize(("k", "chunk"), [(1, 1), (3, 4), (5, 7), (9, 2), (13, 40), (40, 6), (50, 13)])
def test_streamed_topk_equals_brute_force(largest: bool, with_keep: bool, k: int, chunk: int) -> None:
    values = tied_values(seed=k * 100 + chunk, rows=11, cols=40)
    keep = None
    if with_keep:
        keep = torch.rand(values.shape, generator=torch.Generator().manual_seed(chunk)) < 0.6
        keep[0] = False  # a row without any candidate: all padding
    got_v, got_i = streamed(values, k, largest, keep, chunk)
    want_v, want_i = brute_topk(values, k, largest, keep)
    assert got_v.dtype == values.dtype and got_i.dtype == torch.int64 and got_v.shape == (11, k)
    assert np.array_equal(got_i.numpy(), want_i)
    assert np.array_equal(got_v.double().numpy(), want_v)


@pytest.mark.parametrize("largest", [True, False])
def test_result_does_not_depend_on_the_chunk_size(largest: bool) -> None:
    values = torch.randn(6, 300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    values[:, 150:] = values[:, :150]  # every value twice: ties across chunks
    first = streamed(values, 25, largest, None, 300)
    for chunk in (1, 17, 64, 151):
        again = streamed(values, 25, largest, None, chunk)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]), chunk


def test_k_beyond_the_rows_pads_with_the_worst_value() -> None:
    values = torch.tensor([[2.0, 1.0, 2.0]])
    got_v, got_i = streamed(values, 5, True, None, 2)
    assert got_i.tolist() == [[0, 2, 1, -1, -1]]
    assert got_v.tolist() == [[2.0, 2.0, 1.0, -math.inf, -math.inf]]
    got_v, got_i = streamed(values, 5, False, None, 2)
    assert got_i.tolist() == [[1, 0, 2, -1, -1]] and got_v[0, 3:].tolist() == [math.inf, math.inf]


def test_infinite_candidates_rank_before_the_padding() -> None:
    values = torch.tensor([[1.0, -math.inf, 3.0, -math.inf], [math.inf, 0.0, math.inf, 2.0]])
    keep = torch.tensor([[True, True, False, True], [True, True, True, False]])
    got_v, got_i = streamed(values, 4, True, keep, 1)
    assert got_i.tolist() == [[0, 1, 3, -1], [0, 2, 1, -1]]
    got_v, got_i = streamed(values, 4, False, keep, 3)
    assert got_i.tolist() == [[1, 3, 0, -1], [1, 0, 2, -1]]
    assert got_v[1].tolist() == [0.0, math.inf, math.inf, math.inf]


def test_negative_zero_ties_positive_zero() -> None:
    values = torch.tensor([[0.0, -0.0, 1.0, 0.0, -0.0]])
    for chunk in (1, 2, 5):
        _, indices = streamed(values, 4, True, None, chunk)
        assert indices.tolist() == [[2, 0, 1, 3]], chunk
        _, indices = streamed(values, 3, False, None, chunk)
        assert indices.tolist() == [[0, 1, 3]], chunk


def test_best_of_chunk_width_and_columns() -> None:
    values = torch.tensor([[5.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    got_v, got_c = best_of_chunk(values, 3, largest=True)
    assert got_c.tolist() == [[0, 2, 3], [0, 1, 2]] and got_v.tolist() == [[5.0, 5.0, 3.0], [0.0, 0.0, 0.0]]
    got_v, got_c = best_of_chunk(values, 9, largest=False, keep=values > 2)
    assert got_c.tolist() == [[3, 0, 2, -1], [-1, -1, -1, -1]]
    assert got_v[1].tolist() == [math.inf] * 4


def test_empty_batch_and_zero_k() -> None:
    empty = streamed(torch.zeros(0, 10), 3, True, None, 4)
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3)
    nothing = streamed(torch.ones(2, 10), 0, True, None, 4)
    assert nothing[0].shape == (2, 0) and nothing[1].shape == (2, 0)
    untouched = RunningTopK(2, 3, largest=False, dtype=torch.float64, device=torch.device("cpu")).result()
    assert untouched[0].dtype == torch.float64 and untouched[1].tolist() == [[-1] * 3] * 2


@pytest.mark.parametrize("k", [-1, 2.0, True])
def test_running_topk_rejects_a_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        RunningTopK(2, k, largest=True, dtype=torch.float32, device=torch.device("cpu"))


def test_sort_by_score_then_index_is_lexicographic() -> None:
    scores = torch.tensor([[1.0, 2.0, 1.0, 5.0, 2.0, 0.0]])
    indices = torch.tensor([[7, 4, 3, -1, 2, 9]])
    s, i = sort_by_score_then_index(scores, indices)
    assert i.tolist() == [[2, 4, 3, 7, 9, -1]]
    assert s.tolist() == [[2.0, 2.0, 1.0, 1.0, 0.0, -math.inf]]
    s, i = sort_by_score_then_index(scores, indices, descending=False)
    assert i.tolist() == [[9, 3, 7, 2, 4, -1]]
    assert s.tolist() == [[0.0, 1.0, 1.0, 2.0, 2.0, math.inf]]
