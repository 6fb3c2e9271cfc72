"""What a decoding run did: frames decoded, crops produced, and records skipped (reason → count, and
which record of which file where the decoder knew it)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from reidscale.data.records import SkippedRecord

# Skip reasons used by the decoders (a record is counted under exactly one of them).
UNREADABLE_VIDEO = "unreadable_video"  # the container cannot be opened / has no video stream
MISSING_FRAME = "missing_frame"  # the frame index is beyond the frames the file really holds
DECODE_ERROR = "decode_error"  # the decoder failed on the frame (or on the way to it)
BOX_OUTSIDE_FRAME = "box_outside_frame"  # the box does not intersect the frame
NOT_A_VIDEO_RECORD = "not_a_video_record"  # record.frame == -1 (an image record, not for a video decoder)
UNSUPPORTED_CODEC = "unsupported_codec"  # the codec cannot be decoded by the chosen backend/device
DALI_BATCH_ERROR = "dali_batch_error"  # a DALI batch raised; its records are skipped, the run goes on


@dataclass
class DecodeStats:
    """Counters of one decoding run; safe to merge across workers / backends.

    decoded_frames: frames the decoder produced (PyAV: every frame decoded on the way from a keyframe to
                    a wanted frame; DALI: the distinct wanted frames it returned)
    crops:          crops produced (one per record that was not skipped)
    skipped:        reason → number of records skipped for it
    skipped_records: the skipped records the decoder could name (``skip_records``), in the order skipped;
                    every one of them is also counted in ``skipped``
    """

    decoded_frames: int = 0
    crops: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_records: list[SkippedRecord] = field(default_factory=list)

    def count_skip(self, reason: str, count: int = 1) -> None:
        """Record that ``count`` records were skipped for ``reason`` (which ones unknown)."""
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def skip_records(self, reason: str, file: str, records: Iterable[int]) -> None:
        """Record that the records at indices ``records`` (of source ``file``) were skipped for ``reason``:
        counted as ``count_skip`` does, and listed in ``skipped_records``."""
        entries = [SkippedRecord(str(file), int(record), reason) for record in records]
        self.count_skip(reason, len(entries))
        self.skipped_records.extend(entries)

    def remap_records(self, start: int, positions: Sequence[int]) -> None:
        """Rewrite the record index r of ``skipped_records[start:]`` to ``positions[r]`` (a decoder that was
        given a subset of the records counts in the subset's indices; this maps them back)."""
        self.skipped_records[start:] = [
            SkippedRecord(entry.file, int(positions[entry.record]), entry.reason)
            for entry in self.skipped_records[start:]
        ]

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: DecodeStats, positions: Sequence[int] | None = None) -> DecodeStats:
        """Add ``other``'s counts and skipped records into this object (returned for chaining).

        positions: when ``other`` counted over a subset of this object's records, ``positions[r]`` is the
                   index here of the subset's record r (its skipped records are renumbered); None = same
                   indices.
        """
        self.decoded_frames += other.decoded_frames
        self.crops += other.crops
        for reason, count in other.skipped.items():
            self.count_skip(reason, count)
        start = len(self.skipped_records)
        self.skipped_records.extend(other.skipped_records)
        if positions is not None:
            self.remap_records(start, positions)
        return self

    def summary(self) -> str:
        """One line for the end of a long job, e.g. ``decoded 120 frames, 300 crops, skipped 4 (...)``."""
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
        skipped = f"skipped {self.num_skipped}" + (f" ({reasons})" if reasons else "")
        return f"decoded {self.decoded_frames} frames, {self.crops} crops, {skipped}"
