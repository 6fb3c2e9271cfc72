"""Packing manifests into crop shards (reidscale.data.shards.pack, ``reidscale pack``): video boxes decoded
once and JPEG-encoded, whole JPEG images copied byte for byte, unreadable records skipped and named (or an
error with strict), an interrupted pack finished by running it again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidscale.cli import main
from reidscale.data.decode.crops import UNREADABLE_IMAGE, decode_crops
from reidscale.data.decode.stats import DecodeStats
from reidscale.data.manifests import load_manifest
from reidscale.data.records import SkippedRecord
from reidscale.data.shards import CropShards, ShardError
from reidscale.data.shards.pack import PackSettings, encode_jpeg, pack_manifest

SIZE = (32, 16)
QUIET = {"log": lambda line: None}


def test_video_boxes_are_decoded_once_and_stored_as_jpeg(tiny_corpus: Path, tmp_path: Path) -> None:
    manifest = load_manifest("video_tracklets", tiny_corpus)
    records = manifest.records[:150]
    manifest.records = records
    settings = PackSettings(size=SIZE, quality=95, records_per_shard=64, decode_backend="pyav")
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "video_tracklets"}, settings, **QUIET)
    assert (report.records, report.crops, report.skipped, report.shards_written) == (150, 150, {}, 3)
    shards = CropShards(tmp_path / "set")
    assert shards.table["record"].tolist() == list(range(150))
    truth = np.zeros((150, *SIZE, 3), dtype=np.uint8)
    for rows, batch in decode_crops(records, SIZE, DecodeStats(), backend="pyav"):
        truth[rows] = batch
    for row in range(150):
        assert shards.record(row) == records[row]
        assert shards.jpeg(row) == encode_jpeg(truth[row], 95)  # the decoders' crop, encoded once
    assert report.bytes_per_crop == pytest.approx(sum(e.tar_bytes for e in shards.info.shards) / 150)


def test_a_video_spanning_many_shards_is_probed_once(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reidscale.data.decode import loader as loader_module
    from reidscale.data.decode import video_index

    probed: list[str] = []
    real_probe = video_index.probe_video

    def counted(path: str, **options: object) -> object:
        probed.append(path)
        return real_probe(path, **options)

    for module in (loader_module, video_index):  # the router's probe and the decoders' plan
        monkeypatch.setattr(module, "probe_video", counted)
    manifest = load_manifest("video_tracklets", tiny_corpus)
    manifest.records = manifest.records[:200]
    videos = {record.source for record in manifest.records}
    settings = PackSettings(size=SIZE, records_per_shard=20, decode_backend="auto")
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "video_tracklets"}, settings, **QUIET)
    assert report.shards_written == 10 and report.crops == 200
    assert sorted(probed) == sorted(videos)  # once each, although each video spans several shards


def write_luperson_tree(root: Path) -> dict[str, bytes]:
    """A LUPerson-NL folder of JPEGs (video/pid_frame_obj.jpg) with one file that is not an image; returns
    the file bytes by name."""
    files = {}
    rng = np.random.default_rng(0)
    for video in ("vid_a", "vid_b"):
        for pid in range(3):
            path = root / video / f"{pid}_{pid + 1}_0.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(path, quality=90)
            files[f"{video}/{path.name}"] = path.read_bytes()
    (root / "vid_b" / "9_9_0.jpg").write_bytes(b"this is not a JPEG file" * 10)
    return files


def test_whole_jpeg_images_are_copied_and_a_broken_one_is_skipped_and_named(tmp_path: Path) -> None:
    files = write_luperson_tree(tmp_path / "luperson")
    manifest = load_manifest("luperson_nl", tmp_path / "luperson")
    settings = PackSettings(size=SIZE, records_per_shard=4)
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "luperson_nl"}, settings, **QUIET)
    assert (report.records, report.crops, report.skipped) == (7, 6, {UNREADABLE_IMAGE: 1})
    shards = CropShards(tmp_path / "set")
    for row in range(len(shards)):
        source = Path(shards.record(row).source)
        assert shards.jpeg(row) == files[f"{source.parent.name}/{source.name}"]  # byte for byte
    broken = next(i for i, r in enumerate(manifest.records) if r.source.endswith("9_9_0.jpg"))
    assert shards.skipped() == [
        SkippedRecord(str(tmp_path / "luperson/vid_b/9_9_0.jpg"), broken, UNREADABLE_IMAGE)
    ]
    strict = PackSettings(size=SIZE, records_per_shard=4, strict=True)
    with pytest.raises(
        ShardError, match=rf"record {broken} \(.*9_9_0.jpg\) cannot be packed: unreadable_image"
    ):
        pack_manifest(manifest, tmp_path / "strict", {"kind": "luperson_nl"}, strict, **QUIET)


def test_an_interrupted_pack_is_finished_by_running_it_again(tmp_path: Path) -> None:
    write_luperson_tree(tmp_path / "luperson")
    manifest = load_manifest("luperson_nl", tmp_path / "luperson")
    settings = PackSettings(size=SIZE, records_per_shard=2)
    pack_manifest(manifest, tmp_path / "set", {"kind": "luperson_nl"}, settings, **QUIET)
    whole = CropShards(tmp_path / "set")
    before = [whole.jpeg(row) for row in range(len(whole))]
    info = json.loads((tmp_path / "set" / "shards.json").read_text())
    info["shards"] = info["shards"][:2]  # as if killed while writing the third of four shards
    (tmp_path / "set" / "shards.json").write_text(json.dumps(info))
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "luperson_nl"}, settings, **QUIET)
    assert (report.shards_resumed, report.shards_written, report.crops) == (2, 2, 6)
    again = CropShards(tmp_path / "set")
    assert [again.jpeg(row) for row in range(len(again))] == before
    other = PackSettings(size=SIZE, records_per_shard=3)
    with pytest.raises(ShardError, match="holds a shard set of other settings or another source"):
        pack_manifest(manifest, tmp_path / "set", {"kind": "luperson_nl"}, other, **QUIET)


def test_pack_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_luperson_tree(tmp_path / "luperson")
    command = ["pack", "--manifest", "luperson_nl", str(tmp_path / "luperson"), "--size", "32", "16"]
    assert main([*command, "--out", str(tmp_path / "set"), "--records-per-shard", "3"]) == 0
    out = capsys.readouterr().out
    assert f"pack: luperson_nl manifest {tmp_path / 'luperson'}: 7 records (0 skipped by the reader)" in out
    assert [line.split(",")[0] for line in out.splitlines() if line.startswith("pack: shard")] == [
        "pack: shard 1/3: 3 crops of 3 records",
        "pack: shard 2/3: 3 crops of 3 records",
        "pack: shard 3/3: 0 crops of 1 records",  # vid_b/9_9_0.jpg, the broken file, sorts last
    ]
    assert f"packed 7 records into {tmp_path / 'set'}: 6 crops, skipped 1 unreadable_image;" in out
    assert main([*command, "--out", str(tmp_path / "luperson" / "packed")]) == 2
    assert "lies inside the corpus folder" in capsys.readouterr().err
    assert main([*command, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert "cannot be packed: unreadable_image" in capsys.readouterr().err
