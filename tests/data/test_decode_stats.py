"""DecodeStats: skip counts by reason and the skipped records it names, merged and renumbered.

Truths: hand-counted reasons and hand-renumbered record indices.
"""

from __future__ import annotations

from reidscale.data.decode.stats import DecodeStats
from reidscale.data.records import SkippedRecord


def test_skip_records_counts_and_names_each_record() -> None:
    stats = DecodeStats()
    stats.skip_records("missing_frame", "/v/a.avi", [3, 7])
    stats.count_skip("decode_error", 2)  # records unknown: counted, not named
    assert stats.skipped == {"missing_frame": 2, "decode_error": 2} and stats.num_skipped == 4
    assert stats.skipped_records == [
        SkippedRecord("/v/a.avi", 3, "missing_frame"),
        SkippedRecord("/v/a.avi", 7, "missing_frame"),
    ]
    assert stats.skipped_records[0].as_dict() == {"file": "/v/a.avi", "record": 3, "reason": "missing_frame"}
    stats.skip_records("box_outside_frame", "/v/b.avi", [])
    assert "box_outside_frame" not in stats.skipped and len(stats.skipped_records) == 2


def test_merge_adds_counts_and_renumbers_a_subsets_records() -> None:
    total = DecodeStats(decoded_frames=5, crops=4)
    total.skip_records("unreadable_image", "/i/x.jpg", [0])
    part = DecodeStats(decoded_frames=3, crops=2)
    part.skip_records("unreadable_video", "/v/c.avi", [0, 2])  # subset indices 0 and 2 ...
    total.merge(part, positions=[1, 4, 6])  # ... are records 1 and 6 of the whole
    assert (total.decoded_frames, total.crops) == (8, 6)
    assert total.skipped == {"unreadable_image": 1, "unreadable_video": 2}
    assert [(e.file, e.record, e.reason) for e in total.skipped_records] == [
        ("/i/x.jpg", 0, "unreadable_image"),
        ("/v/c.avi", 1, "unreadable_video"),
        ("/v/c.avi", 6, "unreadable_video"),
    ]
    same = DecodeStats().merge(part)  # no positions: the indices are kept
    assert [e.record for e in same.skipped_records] == [0, 2]
    assert [e.record for e in part.skipped_records] == [0, 2]  # the merged-in object is not changed


def test_remap_records_renumbers_only_from_start() -> None:
    stats = DecodeStats()
    stats.skip_records("missing_frame", "/v/a.avi", [0, 1])
    stats.remap_records(1, [10, 20])
    assert [e.record for e in stats.skipped_records] == [0, 20]
