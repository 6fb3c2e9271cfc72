"""Trackers: exact read-back of jsonl and offline wandb runs, console format, rank gating, fan-out."""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidscale.tracking import (
    ConsoleTracker,
    JsonlTracker,
    MultiTracker,
    NullTracker,
    Tracker,
    WandbOptions,
    build_tracker,
    find_offline_run,
    read_jsonl,
    read_jsonl_config,
    read_jsonl_history,
    read_wandb_config,
    read_wandb_history,
    read_wandb_run_info,
    resolve_wandb_mode,
)
from reidscale.tracking.console import format_metric_value
from reidscale.tracking.wandb_records import (
    BLOCK_SIZE,
    iter_record_payloads,
    log_is_closed,
    wait_for_closed_log,
)

# Values chosen so that any lossy formatting shows: shortest-repr floats with 17 significant digits,
# an int beyond 2**53 (not representable as a double), tiny and huge magnitudes, negative zero.
EXACT_STEPS: list[dict[str, int | float]] = [
    {"loss": 0.1 + 0.2, "count": 2**53 + 1, "lr": 5e-4},
    {"loss": 1 / 3, "count": -7, "lr": 1e-300},
    {"loss": math.pi * 1e10, "count": 0, "lr": -0.0},
]


class RecordingTracker(Tracker):
    """Test double: remembers what reached the backend hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def _write_metrics(self, metrics, step):
        self.calls.append(("metrics", metrics, step))

    def _write_config(self, config):
        self.calls.append(("config", config))

    def _write_image(self, key, path, step, caption):
        self.calls.append(("image", key, path, step, caption))

    def _close(self, failed):
        self.calls.append(("close", failed))


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 4), (200, 10, 10)).save(path)
    return path


def _assert_same_typed(read: dict, sent: dict) -> None:
    for key, value in sent.items():
        assert type(read[key]) is type(value), (key, read[key], value)
        assert repr(read[key]) == repr(value), key  # also distinguishes -0.0 from 0.0


# ---------------------------------------------------------------- jsonl


def test_jsonl_reads_back_exactly_what_was_logged(tmp_path):
    path = tmp_path / "logs" / "metrics.jsonl"
    before = time.time()
    tracker = JsonlTracker(path)
    for step, metrics in enumerate(EXACT_STEPS):
        tracker.log(metrics, step=step * 10)
    tracker.finish()
    rows = read_jsonl_history(path)
    assert [row["step"] for row in rows] == [0, 10, 20]
    for row, sent in zip(rows, EXACT_STEPS, strict=True):
        assert set(row) == {"step", "time", *sent}
        assert before <= row["time"] <= time.time()
        _assert_same_typed(row, sent)


def test_jsonl_converts_numpy_and_torch_scalars_and_writes_nonfinite_as_null(tmp_path):
    path = tmp_path / "m.jsonl"
    with JsonlTracker(path) as tracker:
        tracker.log(
            {
                "f32": np.float32(0.1),
                "i64": np.int64(-3),
                "flag": np.bool_(True),
                "t": torch.tensor(2.5, dtype=torch.float64),
                "t1": torch.tensor([7]),
                "nan": float("nan"),
                "inf": -math.inf,
                "huge": 2**70,
            }
        )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    (row,) = read_jsonl_history(path)
    expected = {"f32": float(np.float32(0.1)), "i64": -3, "flag": True, "t": 2.5, "t1": 7, "huge": 2**70}
    _assert_same_typed(row, expected)
    assert row["nan"] is None and row["inf"] is None
    assert row["step"] == 0


def test_jsonl_config_and_image_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    image = _png(tmp_path / "rank.png")
    config = {"model": {"arch": "resnet50_ibn", "dims": (2048, 256)}, "out": tmp_path, "lr": 0.1 + 0.2}
    with JsonlTracker(path, config=config) as tracker:
        tracker.log({"loss": 1.0}, step=4)
        tracker.log_image("rank_list", image, caption="query 3")
        tracker.log_config({"lr": 1e-3, "late": None})
    expected = {"model": {"arch": "resnet50_ibn", "dims": [2048, 256]}, "out": str(tmp_path), "lr": 1e-3}
    assert read_jsonl_config(path) == {**expected, "late": None}
    records = read_jsonl(path)
    assert [sorted(r) for r in records] == [
        ["config", "time"],
        ["loss", "step", "time"],
        ["image", "step", "time"],
        ["config", "time"],
    ]
    assert records[2]["image"] == {"key": "rank_list", "path": str(image.resolve()), "caption": "query 3"}
    assert records[2]["step"] == 5  # step=None is one after the last step
    assert [row["step"] for row in read_jsonl_history(path)] == [4]


def test_jsonl_lines_are_on_disk_before_finish_and_a_cut_last_line_is_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    tracker = JsonlTracker(path)
    tracker.log({"a": 1})
    tracker.log({"a": 2})
    assert [row["a"] for row in read_jsonl_history(path)] == [1, 2]  # read while still open
    tracker.finish()
    with open(path, "a") as handle:
        handle.write('{"step": 2, "a"')
    assert [row["a"] for row in read_jsonl_history(path)] == [1, 2]
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        read_jsonl(path)
    # a resumed run appends
    with JsonlTracker(path.with_name("r.jsonl")) as first:
        first.log({"a": 1}, step=0)
    with JsonlTracker(path.with_name("r.jsonl")) as second:
        second.log({"a": 2}, step=1)
    assert [row["a"] for row in read_jsonl_history(path.with_name("r.jsonl"))] == [1, 2]


def test_jsonl_rejects_reserved_metric_names_and_directory_paths(tmp_path):
    with JsonlTracker(tmp_path / "m.jsonl") as tracker, pytest.raises(ValueError, match="'time'"):
        tracker.log({"time": 0.5})
    with pytest.raises(ValueError, match="directory"):
        JsonlTracker(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        read_jsonl(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- console


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.2345, "1.2345"),
        (5e-4, "5.00e-04"),
        (0.0, "0.0000"),
        (-0.5, "-0.5000"),
        (12345.6789, "12345.6789"),
        (123456.0, "1.23e+05"),
        (7, "7"),
        (True, "True"),
        (float("nan"), "nan"),
        (-math.inf, "-inf"),
    ],
)
def test_console_value_format(value, text):
    assert format_metric_value(value) == text


def test_console_lines(capsys, tmp_path):
    image = _png(tmp_path / "r.png")
    with ConsoleTracker(config={"model": {"arch": "r50", "dim": 256}, "tags": []}) as tracker:
        tracker.log({"loss": 1.2345, "lr": 5e-4}, step=120)
        tracker.log({"images_per_s": 113}, step=None)
        tracker.log_image("ranks", image, step=130, caption="q1")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "config | model.arch = 'r50'",
        "config | model.dim = 256",
        "config | tags = []",
        "step 120 | loss 1.2345 | lr 5.00e-04",
        "step 121 | images_per_s 113",
        f"step 130 | image ranks: {image} (q1)",
    ]


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_progress_bar_on_terminal_and_off_when_disabled():
    terminal = _FakeTerminal()
    items = list(ConsoleTracker(stream=terminal).progress(range(5), total=5, desc="extract"))
    assert items == [0, 1, 2, 3, 4]
    assert "extract" in terminal.getvalue() and "5/5" in terminal.getvalue()

    silent = _FakeTerminal()
    items = list(ConsoleTracker(stream=silent, show_progress=False).progress(iter("abc"), desc="x"))
    assert items == ["a", "b", "c"] and silent.getvalue() == ""


# ---------------------------------------------------------------- interface rules


def test_step_rules_and_input_errors(tmp_path):
    tracker = RecordingTracker()
    tracker.log({"a": 1})
    tracker.log({"a": 1}, step=np.int64(5))
    tracker.log({"a": 1}, step=5)
    tracker.log({"a": 1})
    assert [call[2] for call in tracker.calls] == [0, 5, 5, 6]
    assert all(type(call[2]) is int for call in tracker.calls)
    with pytest.raises(ValueError, match="must not decrease"):
        tracker.log({"a": 1}, step=3)
    for bad_step in (-1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="step must be an integer"):
            tracker.log({"a": 1}, step=bad_step)
    with pytest.raises(ValueError, match=r"'name'.*str"):
        tracker.log({"name": "r50"})
    with pytest.raises(ValueError, match=r"'emb'.*shape \(3,\)"):
        tracker.log({"emb": torch.zeros(3)})
    with pytest.raises(ValueError, match="mapping"):
        tracker.log([("a", 1)])
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        tracker.log_image("ranks", tmp_path / "nope.png")
    with pytest.raises(ValueError, match=r"config\.model\.fn.*function"):
        tracker.log_config({"model": {"fn": print}})
    with pytest.raises(ValueError, match="non-string key 3"):
        tracker.log_config({"a": {3: "x"}})
    tracker.finish()
    tracker.finish()
    assert tracker.calls[-1] == ("close", False) and tracker.calls.count(("close", False)) == 1
    with pytest.raises(RuntimeError, match="after finish"):
        tracker.log({"a": 1})


def test_context_manager_marks_failure():
    tracker = RecordingTracker()
    with pytest.raises(KeyError), tracker:
        raise KeyError("boom")
    assert tracker.finished and tracker.calls == [("close", True)]


def test_multitracker_fans_out_with_one_resolved_step(tmp_path, capsys):
    first, second = RecordingTracker(), RecordingTracker()
    image = _png(tmp_path / "x.png")
    with MultiTracker([first, second]) as multi:
        multi.log({"loss": np.float32(0.5)}, step=2)
        multi.log({"loss": 0.25})
        multi.log_config({"seed": 1})
        multi.log_image("ranks", image, caption="c")
    expected = [
        ("metrics", {"loss": 0.5}, 2),
        ("metrics", {"loss": 0.25}, 3),
        ("config", {"seed": 1}),
        ("image", "ranks", image, 4, "c"),
        ("close", False),
    ]
    assert first.calls == expected and second.calls == expected

    built = build_tracker(["console", "jsonl"], tmp_path / "run", "demo", config={"seed": 3})
    assert isinstance(built, MultiTracker)
    assert [type(t) for t in built.trackers] == [ConsoleTracker, JsonlTracker]
    with built:
        built.log({"loss": 2.0})
        built.log({"loss": 1.0})
        assert list(built.progress(range(3), total=3)) == [0, 1, 2]
    jsonl_path = tmp_path / "run" / "metrics.jsonl"
    assert [(r["step"], r["loss"]) for r in read_jsonl_history(jsonl_path)] == [(0, 2.0), (1, 1.0)]
    assert read_jsonl_config(jsonl_path) == {"seed": 3}
    assert capsys.readouterr().err.splitlines() == [
        "step 0 | loss 2.0000",
        "step 1 | loss 1.0000",
    ]


def test_multitracker_closes_every_tracker_when_one_fails():
    class Failing(RecordingTracker):
        def _close(self, failed):
            raise OSError("disk gone")

    last = RecordingTracker()
    multi = MultiTracker([Failing(), last])
    with pytest.raises(OSError, match="disk gone"):
        multi.finish()
    assert last.finished and last.calls == [("close", False)]
    with pytest.raises(ValueError, match="Tracker instances"):
        MultiTracker([object()])


# ---------------------------------------------------------------- build_tracker and rank gating


def test_rank_one_gets_a_null_tracker_that_writes_nothing(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    tracker = build_tracker(["console", "jsonl", "wandb"], run_dir, "r", config={"a": 1}, rank=1)
    assert type(tracker) is NullTracker
    with tracker:
        tracker.log({"loss": 1.0}, step=3)
        tracker.log_config({"b": 2})
        tracker.log_image("x", tmp_path / "missing.png")
        assert list(tracker.progress([1, 2])) == [1, 2]
    monkeypatch.setenv("RANK", "1")
    assert type(build_tracker(["jsonl"], run_dir, "r")) is NullTracker
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    with build_tracker(["jsonl"], run_dir, "r") as rank_zero:
        assert type(rank_zero) is JsonlTracker
    assert type(build_tracker([], run_dir, "r")) is NullTracker


def test_build_tracker_rejects_bad_backend_lists(tmp_path):
    with pytest.raises(ValueError, match=r"'tensorboard'.*\['wandb', 'jsonl', 'console'\]"):
        build_tracker(["jsonl", "tensorboard"], tmp_path, "r", rank=1)
    with pytest.raises(ValueError, match="list of names"):
        build_tracker("wandb", tmp_path, "r")
    with pytest.raises(ValueError, match="more than once"):
        build_tracker(["jsonl", "jsonl"], tmp_path, "r")
    with pytest.raises(ValueError, match="run_name"):
        build_tracker(["jsonl"], tmp_path, "")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- wandb


def test_wandb_mode_resolution():
    assert resolve_wandb_mode(None, {}) == "offline"
    assert resolve_wandb_mode(None, {"WANDB_API_KEY": "k"}) == "online"
    assert resolve_wandb_mode(None, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert resolve_wandb_mode(None, {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_wandb_mode("disabled", {"WANDB_MODE": "online"}) == "disabled"
    with pytest.raises(ValueError, match="WANDB_MODE"):
        resolve_wandb_mode(None, {"WANDB_MODE": "sometimes"})
    with pytest.raises(ValueError, match=r"WandbOptions\.mode"):
        WandbOptions(mode="cloud")
    with pytest.raises(ValueError, match=r"WandbOptions\.tags"):
        WandbOptions(tags="a,b")


@pytest.fixture
def isolated_wandb_env(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    for name, sub in [
        ("WANDB_DIR", "wb"),
        ("WANDB_CONFIG_DIR", "wb_config"),
        ("WANDB_CACHE_DIR", "wb_cache"),
    ]:
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wb_data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_offline_wandb_run_reads_back_exactly(isolated_wandb_env):
    tmp_path = isolated_wandb_env
    run_dir = tmp_path / "run"
    # a config above one 32 KiB block forces the record to be split into first/middle/last pieces
    config = {
        "model": {"arch": "resnet50_ibn", "dims": [2048, 256]},
        "lr": 0.1 + 0.2,
        "wd": 2.0,
        "notes": "x" * 70_000,
    }
    options = WandbOptions(project="reidscale-test", tags=["unit", "offline"], group="g1")
    tracker = build_tracker(
        ["wandb"], run_dir, "exact-readback", config=config, wandb_options=options, rank=0
    )
    assert tracker.mode == "offline"
    for step, metrics in enumerate(EXACT_STEPS):
        tracker.log(metrics, step=step * 10)
    tracker.log({"f32": np.float32(0.1), "int64_min": -(2**63), "nan": float("nan")}, step=30)
    tracker.log_image("rank_list", _png(tmp_path / "ranks.png"), step=31, caption="query 0")
    tracker.log_config({"epochs": 100})
    tracker.finish()
    tracker.finish()

    record_file = find_offline_run(run_dir)
    assert record_file == tracker.record_file
    assert record_file.stat().st_size > 2 * BLOCK_SIZE
    assert find_offline_run(run_dir / "wandb") == record_file

    rows = read_wandb_history(record_file.parent)
    assert [row["_step"] for row in rows] == [0, 10, 20, 30, 31]
    for row, sent in zip(rows[:3], EXACT_STEPS, strict=True):
        _assert_same_typed(row, sent)
    _assert_same_typed(rows[3], {"f32": float(np.float32(0.1)), "int64_min": -(2**63)})
    assert math.isnan(rows[3]["nan"])
    image = rows[4]["rank_list"]
    assert image["_type"] == "image-file" and image["caption"] == "query 0"
    assert (image["width"], image["height"]) == (8, 4)
    assert (record_file.parent / "files" / image["path"]).is_file()

    expected_config = {**json.loads(json.dumps(config)), "epochs": 100}
    assert read_wandb_config(run_dir) == expected_config
    info = read_wandb_run_info(record_file)
    assert (info["project"], info["name"], info["group"]) == ("reidscale-test", "exact-readback", "g1")
    assert info["tags"] == ["unit", "offline"]

    # a run killed mid-write: the cut-off record is ignored, everything before it is read
    cut = tmp_path / "cut" / record_file.name
    cut.parent.mkdir()
    cut.write_bytes(record_file.read_bytes()[:-5])
    all_payloads = list(iter_record_payloads(record_file))
    assert list(iter_record_payloads(cut)) == all_payloads[:-1]
    # corruption anywhere else is an error
    corrupt = bytearray(record_file.read_bytes())
    corrupt[BLOCK_SIZE + 100] ^= 0xFF
    cut.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="CRC"):
        read_wandb_history(cut)
    cut.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a wandb record log"):
        read_wandb_history(cut)
    shutil.rmtree(cut.parent)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="offline-run"):
        find_offline_run(tmp_path / "empty")


def test_finish_returns_only_once_the_record_log_is_complete(isolated_wandb_env, monkeypatch):
    # wandb's run.finish() returns before wandb-core has written the last block of the log: the service
    # writes it when it closes the run's stream on the "finish" message. Deliver that message late: the
    # log cannot be complete before it arrives, so finish() must wait for the event, not return early.
    from wandb.sdk.lib.service import service_connection

    inform_finish = service_connection.ServiceConnection.inform_finish
    sent = threading.Event()

    def late_inform_finish(self, run_id):
        def send() -> None:
            inform_finish(self, run_id)
            sent.set()

        threading.Timer(0.5, send).start()

    monkeypatch.setattr(service_connection.ServiceConnection, "inform_finish", late_inform_finish)
    tracker = build_tracker(["wandb"], isolated_wandb_env / "run", "late-close", rank=0)
    for step in range(40):
        tracker.log({"loss": 1.0 / (step + 1)}, step=step)
    tracker.finish()
    assert sent.is_set()
    assert log_is_closed(tracker.record_file)
    assert [row["_step"] for row in read_wandb_history(tracker.record_file)] == list(range(40))


def test_log_is_closed_sees_the_exit_record_only_once_the_last_block_is_written(isolated_wandb_env):
    tracker = build_tracker(["wandb"], isolated_wandb_env / "run", "blocks", rank=0)
    tracker.log_config({"notes": "x" * (3 * BLOCK_SIZE)})  # a log of several blocks
    tracker.log({"loss": 0.5}, step=0)
    tracker.finish()
    whole = tracker.record_file.read_bytes()
    assert len(whole) > 3 * BLOCK_SIZE and log_is_closed(tracker.record_file)

    # what wandb-core has on disk before it closes the stream: only the full blocks
    partial = isolated_wandb_env / "partial" / "run-x.wandb"
    partial.parent.mkdir()
    partial.write_bytes(whole[: len(whole) // BLOCK_SIZE * BLOCK_SIZE])
    assert not log_is_closed(partial)
    partial.write_bytes(b"")  # created, nothing written yet
    assert not log_is_closed(partial)
    with pytest.warns(RuntimeWarning, match="has not finished writing"):
        assert wait_for_closed_log(partial, timeout_s=0.05) is False

    # the waiter returns as soon as the rest arrives (written by another thread, as wandb-core does)
    partial.write_bytes(whole[: len(whole) // BLOCK_SIZE * BLOCK_SIZE])
    finished = threading.Event()

    def close_later() -> None:
        with open(partial, "ab") as handle:
            handle.write(whole[len(whole) // BLOCK_SIZE * BLOCK_SIZE :])
        finished.set()

    threading.Timer(0.2, close_later).start()
    assert wait_for_closed_log(partial, timeout_s=60) is True
    assert finished.is_set()
    assert list(iter_record_payloads(partial)) == list(iter_record_payloads(tracker.record_file))
