"""benchmarks/bench_scl.py: the original selection against a brute-force distance, the agreement check on
hand-made selections, the generated banks, and a tiny end-to-end run (spawned ranks, 1 and 2) whose rows
must be well formed and whose fused and original selections must agree."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from benchmarks import bench_scl as bench
from benchmarks.common import PROVENANCE_COLUMNS, append_rows, provenance
from reidscale.objectives.selective import banks as banks_module
from reidscale.objectives.selective.config import SelectiveConfig

TINY_SCL = {"global_dim": 16, "local_dim": 8, "num_stripes": 2, "num_positives": 3, "num_negatives": 12}


def _spec(**changes) -> bench.Spec:
    base = {
        "op": "select",
        "path": "fused",
        "n_rows": 300,
        "batch": 6,
        "bank_dtype": "float32",
        "device": "cpu",
        "world_size": 1,
        "threads": 1,
        "warmup": 0,
        "repeats": 1,
        "scl": TINY_SCL,
    }
    return bench.Spec(**{**base, **changes})


# ------------------------------------------------------------------------------------ original path
def test_original_topk_matches_brute_force_distance() -> None:
    gen = torch.Generator().manual_seed(1)
    config = SelectiveConfig(**TINY_SCL, lambda_global=0.7, cam_penalty=0.3)
    n, b, width = 40, 5, 16 + 2 * 8
    bank = bench.normalise_blocks(torch.randn(n, width, generator=gen), config)
    queries = bench.normalise_blocks(torch.randn(b, width, generator=gen), config)
    cams_bank, cams_query = torch.randint(0, 3, (n,), generator=gen), torch.randint(0, 3, (b,), generator=gen)
    self_index = torch.tensor([3, -1, 39, 0, 17])
    # brute force, straight from docs/methods.md: λ_g‖g−G‖² + (1−λ_g)·mean_k‖l_k−L_k‖² + λ_c[same cam]
    diff = queries[:, None, :] - bank[None, :, :]  # [B, N, D]
    d_global = (diff[..., :16] ** 2).sum(-1)
    d_local = ((diff[..., 16:24] ** 2).sum(-1) + (diff[..., 24:32] ** 2).sum(-1)) / 2
    dist = 0.7 * d_global + 0.3 * d_local + 0.3 * (cams_query[:, None] == cams_bank[None, :]).float()
    for row, own in enumerate(self_index.tolist()):
        if own >= 0:
            dist[row, own] = float("inf")
    expected = torch.argsort(dist, dim=1, stable=True)[:, :7]
    banks = [(bank[:, :16], 0.7), (bank[:, 16:24], 0.15), (bank[:, 24:32], 0.15)]
    scores, ids = bench.original_topk(
        queries, banks, 7, self_index=self_index, query_cams=cams_query, bank_cams=cams_bank, cam_penalty=0.15
    )
    assert torch.equal(ids, expected)
    torch.testing.assert_close(scores, 1 - dist.gather(1, expected) / 2, rtol=0, atol=1e-5)


def test_original_topk_pads_past_the_rows_that_exist() -> None:
    bank = torch.eye(3)
    queries = torch.tensor([[1.0, 0.0, 0.0]])
    scores, ids = bench.original_topk(queries, [(bank, 1.0)], 4, self_index=torch.tensor([0]))
    # rows 1 and 2 are at distance 2 (score 0), self is excluded, the rest is padding
    assert ids.tolist() == [[1, 2, -1, -1]]
    assert scores[0, :2].tolist() == [0.0, 0.0] and torch.isinf(scores[0, 2:]).all()


# ---------------------------------------------------------------------------------------- agreement
def _sel(ids: list[list[int]], scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(scores), torch.tensor(ids)


def test_agreement_allows_near_ties_only() -> None:
    base = _sel([[5, 2, 9, 4]], [[0.9, 0.8, 0.5, 0.4]])
    same = bench.selection_agreement(base, base, 2, 1e-3)
    assert (same["agree"], same["set_mismatches"], same["idx_match_frac"]) == ("yes", 0, "1.000000")
    # row 4 (0.4) and row 7 (0.4 + 1e-4) swap at the k boundary: a near-tie
    tie = bench.selection_agreement(base, _sel([[5, 2, 9, 7]], [[0.9, 0.8, 0.5, 0.4001]]), 2, 1e-3)
    assert (tie["agree"], tie["set_mismatches"], tie["untied_mismatches"]) == ("yes", 2, 0)
    # the same swap with a score gap of 0.1 is a real disagreement (both directions count)
    far = bench.selection_agreement(base, _sel([[5, 2, 9, 7]], [[0.9, 0.8, 0.5, 0.3]]), 2, 1e-3)
    assert (far["agree"], far["untied_mismatches"]) == ("NO", 2)
    # a different positive (top-P set) at a clear gap fails even though the top-k sets are equal
    swapped = bench.selection_agreement(base, _sel([[5, 9, 2, 4]], [[0.9, 0.8, 0.5, 0.4]]), 2, 1e-3)
    assert swapped["agree"] == "NO"
    # common rows whose scores differ beyond the tolerance
    shifted = bench.selection_agreement(base, _sel([[5, 2, 9, 4]], [[0.9, 0.8, 0.5, 0.41]]), 2, 1e-3)
    assert (shifted["agree"], shifted["max_score_diff"]) == ("NO", "1.000e-02")


# ---------------------------------------------------------------------------------- synthetic banks
def test_generated_rows_are_unit_per_block_and_shard_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "GEN_BLOCK", 64)  # several blocks in a small bank
    config = SelectiveConfig(**TINY_SCL)
    full = torch.empty(300, 32)
    bench.fill_rows(full, 0, config, seed=3)
    for start, width in bench.feature_blocks(config):
        norms = full[:, start : start + width].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones(300), rtol=0, atol=1e-5)
    part = torch.empty(150, 32, dtype=torch.float16)
    bench.fill_rows(part, 150, config, seed=3)  # rank 1 of 2 generates only its rows
    assert torch.equal(part, full[150:].half())
    assert torch.unique(full, dim=0).shape[0] == 300  # blocks are not copies of the pool


# --------------------------------------------------------------------------------------- end to end
def test_select_case_plants_anchor_rows_and_original_agrees() -> None:
    spec = _spec()
    fused = bench.select_case(spec, torch.device("cpu"), 0)
    original = bench.select_case(replace(spec, path="original"), torch.device("cpu"), 0)
    ids = fused["result"][1]
    assert ids.shape == (6, 15) and (ids >= 0).all()
    anchors = bench.make_anchors(300, 6, spec.config(), spec.seed)
    assert not (ids == anchors.index[:, None]).any()  # self (the planted near-copy) is excluded
    check = bench.selection_agreement(original["result"], fused["result"], 3, 1e-4)
    assert check["agree"] == "yes" and check["untied_mismatches"] == 0


def test_train_case_original_and_fused_losses_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(banks_module, "bank_topk", banks_module.bank_topk)  # restored after the test
    common = {"op": "train_step", "batch": 4, "height": 32, "width": 16, "repeats": 2, "n_rows": 200}
    fused = bench.train_case(_spec(**common), torch.device("cpu"), 0)
    original = bench.train_case(_spec(**common, path="original"), torch.device("cpu"), 0)
    assert banks_module.bank_topk is bench.original_topk  # the original selection was plugged in
    assert len(fused["result"]) == 2 and len(fused["select_seconds"]) == 2
    columns = bench.loss_columns([fused], [original])
    assert columns["agree"] == "yes" and float(columns["loss_diff_vs_original"]) < 1e-4


@pytest.mark.multiproc
def test_tiny_run_writes_well_formed_rows(tmp_path) -> None:
    args = bench.parse_args(["--ops", "select", "--sizes", "300", "--batch", "6", "--repeats", "2"])
    args.scl = TINY_SCL
    saved: list[list[dict]] = []
    rows = bench.run_all(args, saved.append)
    assert saved == [rows]  # one group (select at N = 300), saved as soon as it was measured
    assert [row["case"] for row in rows] == ["original", "fused", "fused_sharded"]
    for row in rows:
        assert tuple(row) == bench.ROW_COLUMNS
        assert row["status"] == "ok", row["status"]
        assert float(row["seconds_median"]) > 0 and float(row["peak_extra_mb"]) >= 0
        assert row["bank_dtype"] == "float32" and row["k"] == 15
    assert [row["agree"] for row in rows] == ["baseline", "yes", "yes"]
    assert rows[2]["dist_backend"] == "gloo" and rows[2]["world_size"] == 2
    assert rows[2]["bank_mb_per_rank"] == f"{150 * 32 * 4 / 2**20:.2f}" != rows[1]["bank_mb_per_rank"]
    assert rows[1]["topk_backend"].startswith("bank_topk: torch")
    path = append_rows(tmp_path / "scl.csv", rows, provenance())
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == [*PROVENANCE_COLUMNS, *bench.ROW_COLUMNS] and len(read) == 3


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    for argv, message in (
        (["--batch", "7"], "--batch must be an even number"),
        (["--sizes", "1"], "bank sizes >= 2"),
        (["--ops", "nope"], "subset of"),
        (["--sizes", "10", "--batch", "32"], "--sizes must be >= --batch"),
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err
