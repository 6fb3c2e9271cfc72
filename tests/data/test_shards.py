"""Crop shards (reidscale.data.shards): written shard by shard, read back by row, read natively by DALI and
by Python's tarfile, resumed after an interruption, and every kind of damage named by shard and record."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidscale.data.records import CropRecord, SkippedRecord
from reidscale.data.shards import (
    CropShards,
    PackedCrop,
    ShardError,
    ShardSetInfo,
    ShardSetWriter,
    read_dali_index,
)

STORAGE = {"encoding": "jpeg", "quality": 95, "height": 32, "width": 16}
SOURCE = {"kind": "test", "path": "/corpus"}


def jpeg_of(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def crop(position: int) -> PackedCrop:
    record = CropRecord(
        f"/corpus/videos/v{position % 3}.mp4", position, (position, 2, 16, 32), pid=position // 4,
        camera=position % 2, video=f"v{position % 3}", tracklet=position // 4,
    )  # fmt: skip
    return PackedCrop(position, record, jpeg_of(position))


def write_set(folder: Path, total: int = 10, per_shard: int = 4, leave_out: tuple[int, ...] = (5,)) -> dict:
    """A set of ``total`` records, ``per_shard`` per shard, the records ``leave_out`` skipped; returns the
    stored crops by position."""
    writer = ShardSetWriter(folder, total, per_shard, STORAGE, SOURCE)
    stored = {}
    for index in writer.pending():
        covered = writer.info.shard_range(index)
        crops = [crop(position) for position in covered if position not in leave_out]
        skipped = [
            SkippedRecord("/corpus/videos/v2.mp4", p, "decode_error") for p in covered if p in leave_out
        ]
        writer.add(index, crops, skipped)
        stored.update({c.position: c for c in crops})
    return stored


def test_rows_read_back_every_byte_and_field_in_position_order(tmp_path: Path) -> None:
    stored = write_set(tmp_path / "set")
    shards = CropShards(tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "shard-000000.idx", "shard-000000.npz", "shard-000000.tar",
        "shard-000001.idx", "shard-000001.npz", "shard-000001.skipped.jsonl", "shard-000001.tar",
        "shard-000002.idx", "shard-000002.npz", "shard-000002.tar", "shards.json",
    ]  # fmt: skip
    positions = [0, 1, 2, 3, 4, 6, 7, 8, 9]  # 10 records in shards of 4, record 5 left out
    assert len(shards) == 9 and shards.table["record"].tolist() == positions
    for row, position in enumerate(positions):
        assert shards.jpeg(row) == stored[position].jpeg
        assert shards.record(row) == stored[position].record
        expected = np.asarray(Image.open(io.BytesIO(stored[position].jpeg)).convert("RGB"))
        assert np.array_equal(shards.image(row), expected)
    assert shards.table["pid"].tolist() == [p // 4 for p in positions]
    assert "sources" not in shards.table and "source" not in shards.table  # read per shard when named
    assert [shards.record(row) for row in (8, 0, 5)] == [stored[p].record for p in (9, 0, 6)]  # any order
    assert [entry.crops for entry in shards.info.shards] == [4, 3, 2]
    assert shards.info.shards[1].skipped == {"decode_error": 1}
    assert shards.skipped() == [SkippedRecord("/corpus/videos/v2.mp4", 5, "decode_error")]


def test_a_shard_is_a_plain_tar_of_jpg_and_json_members(tmp_path: Path) -> None:
    stored = write_set(tmp_path / "set")
    with tarfile.open(tmp_path / "set" / "shard-000001.tar") as tar:
        names = tar.getnames()
        metadata = json.loads(tar.extractfile("0000000006.json").read())
        image = tar.extractfile("0000000006.jpg").read()
    assert names == [f"{p:010d}.{ext}" for p in (4, 6, 7) for ext in ("jpg", "json")]
    assert image == stored[6].jpeg
    assert metadata == {
        "record": 6, "source": "/corpus/videos/v0.mp4", "video": "v0", "tracklet": 1, "frame": 6,
        "box": [6, 2, 16, 32], "camera": 0, "pid": 1,
    }  # fmt: skip
    samples = read_dali_index(tmp_path / "set" / "shard-000001.idx")
    assert [[m.name for m in sample] for sample in samples] == [
        [f"{p:010d}.jpg", f"{p:010d}.json"] for p in (4, 6, 7)
    ]
    raw = (tmp_path / "set" / "shard-000001.tar").read_bytes()
    for sample in samples:  # each offset points at the member's data in the tar
        for member in sample:
            assert len(raw[member.offset : member.offset + member.size]) == member.size
    assert raw[samples[1][0].offset : samples[1][0].offset + samples[1][0].size] == stored[6].jpeg


@pytest.mark.dali
def test_dali_reads_the_shards_natively(tmp_path: Path) -> None:
    """``fn.readers.webdataset`` with our index files returns every crop's JPEG and metadata in order, and
    DALI's CPU decoder gives the pixels PIL gives."""
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn

    stored = write_set(tmp_path / "set")
    folder = tmp_path / "set"
    tars = [str(folder / f"shard-{i:06d}.tar") for i in range(3)]
    indices = [str(folder / f"shard-{i:06d}.idx") for i in range(3)]

    @dali.pipeline_def(batch_size=9, num_threads=1, device_id=None)
    def read_shards():
        jpegs, metadata = fn.readers.webdataset(
            paths=tars, index_paths=indices, ext=["jpg", "json"], dtypes=[dali.types.UINT8, dali.types.UINT8]
        )
        return jpegs, metadata, fn.decoders.image(jpegs, device="cpu", output_type=dali.types.RGB)

    pipe = read_shards()
    pipe.build()
    jpegs, metadata, images = pipe.run()
    positions = [0, 1, 2, 3, 4, 6, 7, 8, 9]
    for sample, position in enumerate(positions):
        assert bytes(np.asarray(jpegs[sample])) == stored[position].jpeg
        assert json.loads(bytes(np.asarray(metadata[sample])))["record"] == position
        expected = np.asarray(Image.open(io.BytesIO(stored[position].jpeg)).convert("RGB")).astype(np.int16)
        assert np.abs(np.asarray(images[sample]).astype(np.int16) - expected).max() <= 1  # both libjpeg-turbo


def test_packing_resumes_at_the_first_unlisted_shard(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    writer = ShardSetWriter(folder, 10, 4, STORAGE, SOURCE)
    writer.add(0, [crop(p) for p in range(4)])
    (folder / "shard-000001.tar").write_bytes(b"half a shard from the run that was killed")
    with pytest.raises(
        ShardError, match=r"1 of 3 shards are finished \(packing was interrupted\); run the same"
    ):
        CropShards(folder)
    resumed = ShardSetWriter(folder, 10, 4, STORAGE, SOURCE)
    assert resumed.pending() == [1, 2]
    for index in resumed.pending():
        resumed.add(index, [crop(p) for p in resumed.info.shard_range(index)])
    shards = CropShards(folder)
    assert len(shards) == 10 and shards.jpeg(5) == crop(5).jpeg  # the killed run's bytes were replaced
    with pytest.raises(ShardError, match=r"holds a shard set of other settings or another source"):
        ShardSetWriter(folder, 10, 5, STORAGE, SOURCE)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match=r"other is not empty and holds no shards.json"):
        ShardSetWriter(tmp_path / "other", 10, 4, STORAGE, SOURCE)
    with pytest.raises(ValueError, match=r"shard 0 is not the next one to write \(3\)"):
        resumed.add(0, [])


def test_shards_out_of_order_or_outside_their_range_are_refused(tmp_path: Path) -> None:
    writer = ShardSetWriter(tmp_path / "set", 10, 4, STORAGE, SOURCE)
    with pytest.raises(ValueError, match=r"takes increasing positions in range\(0, 4\)"):
        writer.add(0, [crop(1), crop(0)])
    with pytest.raises(ValueError, match=r"takes increasing positions in range\(0, 4\)"):
        writer.add(0, [crop(4)])


def _damage(folder: Path, kind: str) -> str:
    """Damage the set in ``folder``; the message expected from reading row 4 (record 4, in shard 1)."""
    tar, idx, npz = (folder / f"shard-000001.{ext}" for ext in ("tar", "idx", "npz"))
    if kind == "truncated":
        tar.write_bytes(tar.read_bytes()[:1000])
        return r"shard-000001.tar: record 0000000004: the tar ends after \d+ of the crop's \d+ bytes"
    if kind == "index_offset":
        lines = idx.read_text().splitlines()
        fields = lines[1].split()
        fields[1] = str(int(fields[1]) + 512)
        idx.write_text("\n".join([lines[0], " ".join(fields), *lines[2:]]) + "\n")
        return r"record 0000000004: the index says 0000000004.jpg \(\d+ bytes\) at byte \d+, the tar has"
    if kind == "index_count":
        lines = idx.read_text().splitlines()
        idx.write_text("\n".join(lines[:-1]) + "\n")
        return r"shard-000001.idx: line 1 announces 4 samples, the file lists 3"
    if kind == "not_jpeg":
        raw = bytearray(tar.read_bytes())
        offset = read_dali_index(idx)[0][0].offset
        raw[offset : offset + 64] = b"\0" * 64
        tar.write_bytes(bytes(raw))
        return r"shard-000001.tar: record 0000000004: the image does not decode"
    with np.load(npz) as stored:
        table = {name: stored[name] for name in stored.files if name != "camera"}
    with open(npz, "wb") as handle:
        np.savez(handle, **table)
    return r"shard-000001.npz: the record table lacks \['camera'\]"


@pytest.mark.parametrize("kind", ["truncated", "index_offset", "index_count", "not_jpeg", "table_field"])
def test_damage_is_named_by_shard_and_record(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "set"
    write_set(folder, leave_out=())
    message = _damage(folder, kind)
    with pytest.raises(ShardError, match=message):
        shards = CropShards(folder)
        shards.image(4)
    if kind in ("truncated", "index_offset", "not_jpeg"):  # one record is damaged, the others still read
        shards = CropShards(folder)
        assert shards.jpeg(0) == crop(0).jpeg and shards.jpeg(8) == crop(8).jpeg


def test_shards_json_is_checked(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    write_set(folder)
    payload = json.loads((folder / "shards.json").read_text())
    payload["shards"][1]["first_record"] = 5
    (folder / "shards.json").write_text(json.dumps(payload))
    with pytest.raises(
        ShardError, match=r"shards\[1\] is shard-000001 from record 5, expected shard-000001 from"
    ):
        ShardSetInfo.read(folder)
    del payload["storage"]
    (folder / "shards.json").write_text(json.dumps(payload))
    with pytest.raises(
        ShardError, match=r"shards.json: a field is missing or malformed \(KeyError\('storage'\)"
    ):
        ShardSetInfo.read(folder)
    with pytest.raises(ShardError, match=r"holds no shards.json: not a crop shard set"):
        CropShards(tmp_path)
