"""The released corpus layouts pack as they are: LUPerson-NL's LMDB (``lmdb/`` + ``keys.pkl``, manifest kind
``luperson_nl_lmdb``) and the CION-AL folder (``sec*/`` + ``cional_annos.json``, kind ``cion_al``).

Each test builds a tiny tree in the layout with known JPEGs, then checks every record field against what it
wrote, the packed bytes against the source bytes, and the bad-input cases in strict and non-strict mode.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidscale.cli import main
from reidscale.data import image_bytes
from reidscale.data.decode.crops import UNREADABLE_IMAGE, decode_crops
from reidscale.data.decode.stats import DecodeStats
from reidscale.data.image_bytes import (
    ImageSourceError,
    close_lmdb_environments,
    lmdb_reference,
    read_image_bytes,
    split_lmdb_reference,
)
from reidscale.data.manifests import (
    ManifestError,
    check_files_exist,
    load_manifest,
    read_saved_manifest,
    save_manifest,
)
from reidscale.data.manifests.safe_pickle import load_plain_pickle
from reidscale.data.records import WHOLE_IMAGE, CropRecord, Manifest, SkippedRecord
from reidscale.data.shards import CropShards, ShardError
from reidscale.data.shards.pack import PackSettings, is_copied, pack_manifest

lmdb = pytest.importorskip("lmdb")

SIZE = (32, 16)
QUIET = {"log": lambda line: None}


@pytest.fixture(autouse=True)
def _fresh_environments() -> Iterator[None]:
    """Every test opens its own LMDBs (tmp_path folders are new each time, but keep the cache small)."""
    yield
    close_lmdb_environments()


def jpeg_bytes(seed: int, shape: tuple[int, int] = (24, 12)) -> bytes:
    """A small JPEG of random pixels; distinct seeds give distinct bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_lmdb(folder: Path, values: dict[str, bytes]) -> Path:
    """An LMDB environment at ``folder`` holding ``values`` under their ASCII keys."""
    folder.mkdir(parents=True, exist_ok=True)
    environment = lmdb.open(str(folder), map_size=1 << 24)
    with environment.begin(write=True) as transaction:
        for key, value in values.items():
            transaction.put(key.encode("ascii"), np.frombuffer(value, np.uint8))  # as the conversion does
    environment.close()
    return folder


def write_keys(path: Path, payload: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


# What a LUPerson-NL conversion of the tree below writes, in write order: videos numbered 1.. in sorted
# country/city/video order, file names sorted inside each video. Video 00002 holds pid 12 again (another
# video, so another tracklet), and pid 3 sorts before pid 12 in video 00001 although it is written later.
#   cn/bj/vid_a: 000012_0000005_00.jpg 000012_0000030_01.jpg 000012_0000030_02.jpg 000003_0000007_00.jpg
#   us/ny/vid_b: 000012_0000001_00.jpg
LUP_KEYS = [
    "00001_000012_0000005_00",
    "00001_000012_0000030_01",
    "00001_000012_0000030_02",
    "00001_000003_0000007_00",
    "00002_000012_0000001_00",
]
LUP_PIDS = [12, 12, 12, 3, 12]


@pytest.fixture
def lupnl(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """``<tmp>/lupnl_lmdb/{lmdb/, keys.pkl}`` and the JPEG bytes by key."""
    values = {key: jpeg_bytes(seed) for seed, key in enumerate(LUP_KEYS)}
    root = tmp_path / "lupnl_lmdb"
    write_lmdb(root / "lmdb", values)
    write_keys(root / "keys.pkl", {"keys": list(LUP_KEYS), "pids": list(LUP_PIDS)})
    return root, values


def expected_lup_records(lmdb_folder: Path) -> list[CropRecord]:
    """By hand: tracklets (1, 3) → 0, (1, 12) → 1, (2, 12) → 2; sorted by (video, pid, frame, obj)."""
    source = {key: f"{lmdb_folder}::{key}" for key in LUP_KEYS}
    return [
        CropRecord(source["00001_000003_0000007_00"], -1, WHOLE_IMAGE, 0, -1, "00001", 0),
        CropRecord(source["00001_000012_0000005_00"], -1, WHOLE_IMAGE, 1, -1, "00001", 1),
        CropRecord(source["00001_000012_0000030_01"], -1, WHOLE_IMAGE, 1, -1, "00001", 1),
        CropRecord(source["00001_000012_0000030_02"], -1, WHOLE_IMAGE, 1, -1, "00001", 1),
        CropRecord(source["00002_000012_0000001_00"], -1, WHOLE_IMAGE, 2, -1, "00002", 2),
    ]


def skips(manifest: Manifest) -> list[tuple[str, int, str]]:
    return [(Path(e.file).name, e.record, e.reason) for e in manifest.skipped_entries]


# ---------------------------------------------------------------------------------------------------------
# LUPerson-NL, LMDB layout


def test_lmdb_layout_records_every_way_it_is_named(lupnl: tuple[Path, dict[str, bytes]]) -> None:
    root, values = lupnl
    expected = expected_lup_records(root / "lmdb")
    manifest = load_manifest("luperson_nl_lmdb", root)
    assert manifest.records == expected and manifest.skipped == {}
    assert manifest.name == f"luperson_nl_lmdb:{root / 'lmdb'}"
    # the LMDB folder itself (keys.pkl found beside it), and an explicit key list elsewhere
    assert load_manifest("luperson_nl_lmdb", root / "lmdb").records == expected
    moved = write_keys(root.parent / "elsewhere.pkl", {"keys": list(LUP_KEYS), "pids": list(LUP_PIDS)})
    (root / "keys.pkl").unlink()
    assert load_manifest("luperson_nl_lmdb", root / "lmdb", keys_file=moved).records == expected
    # without a key list every key of the LMDB is read
    assert load_manifest("luperson_nl_lmdb", root).records == expected
    for record in expected:
        folder, key = split_lmdb_reference(record.source)
        assert folder == str(root / "lmdb") and read_image_bytes(record.source) == values[key]
        assert is_copied(record)


def test_key_list_forms_older_pickles(lupnl: tuple[Path, dict[str, bytes]]) -> None:
    """A plain list of keys, bytes keys and protocols 0 and 2 (sets and bytes rebuilt by globals) all load."""
    root, _ = lupnl
    expected = expected_lup_records(root / "lmdb")
    write_keys(root / "keys.pkl", list(LUP_KEYS), protocol=0)
    assert load_manifest("luperson_nl_lmdb", root).records == expected
    write_keys(root / "keys.pkl", {"keys": [k.encode() for k in LUP_KEYS], "pids": LUP_PIDS}, protocol=2)
    assert load_manifest("luperson_nl_lmdb", root).records == expected
    plain = {"a": [1, 2.5, None, True], "b": (b"\x00\xff", frozenset({3})), "c": {"x"}, "d": bytearray(b"z")}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert load_plain_pickle(write_keys(root / "plain.pkl", plain, protocol)) == plain


def test_lmdb_pack_copies_the_stored_jpegs(lupnl: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, values = lupnl
    manifest = load_manifest("luperson_nl_lmdb", root)
    settings = PackSettings(size=SIZE, records_per_shard=2)
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "luperson_nl_lmdb"}, settings, **QUIET)
    assert (report.records, report.crops, report.skipped, report.shards_written) == (5, 5, {}, 3)
    shards = CropShards(tmp_path / "set")
    for row, record in enumerate(manifest.records):
        assert shards.record(row) == record
        assert shards.jpeg(row) == values[record.source.split("::", 1)[1]]  # byte for byte


def test_lmdb_pack_command(lupnl: tuple[Path, dict[str, bytes]], tmp_path: Path, capsys) -> None:
    root, values = lupnl
    out = tmp_path / "set"
    command = ["pack", "--manifest", "luperson_nl_lmdb", str(root), "--size", "32", "16", "--out", str(out)]
    assert main([*command, "--records-per-shard", "4", "--strict"]) == 0
    printed = capsys.readouterr().out
    assert f"pack: luperson_nl_lmdb manifest {root}: 5 records (0 skipped by the reader)" in printed
    assert f"packed 5 records into {out}: 5 crops, skipped none;" in printed
    shards = CropShards(out)
    assert [shards.jpeg(row) for row in range(len(shards))] == [
        values[key] for key in sorted(LUP_KEYS, key=lambda k: (k[:5], int(k[6:12]), k))
    ]


def test_lmdb_values_decode_for_boxes(lupnl: tuple[Path, dict[str, bytes]]) -> None:
    """A box inside an LMDB image goes through the decoder (the other reader of image bytes)."""
    root, values = lupnl
    key = LUP_KEYS[1]
    record = CropRecord(lmdb_reference(root / "lmdb", key), -1, (2, 3, 8, 10), 0)
    assert not is_copied(record)
    stats = DecodeStats()
    [(rows, batch)] = list(decode_crops([record], SIZE, stats))
    with Image.open(io.BytesIO(values[key])) as image:
        truth = (
            image.convert("RGB").crop((2, 3, 10, 13)).resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)
        )
    assert rows.tolist() == [0] and np.array_equal(batch[0], np.asarray(truth))


@pytest.mark.parametrize(
    ("key", "pid", "complaint", "reason"),
    [
        (
            "00_00_0000_00000001",
            1,
            r"key '00_00_0000_00000001' is not <video>_<pid>_<frame>_<obj>",
            "bad_key",
        ),
        ("00003_000001_0000001", 1, r"key '00003_000001_0000001' is not <video>", "bad_key"),
        ("00003_000001_0000001_00", 2, r"key .* names pid 1 but pids\[5\] = 2", "bad_entry"),
        (7, 7, r"key 7 is a int, expected a str", "bad_entry"),
        ("00003_000001_0000001_00", "1", r"pids\[5\] = '1', expected an int", "bad_entry"),
        (LUP_KEYS[0], 12, rf"key '{LUP_KEYS[0]}' repeats an earlier key", "duplicate_key"),
        ("00003_000001_0000001_00", 1, r"key '00003_000001_0000001_00' is not in the LMDB", "missing_key"),
        (f"00003_{'1' * 600}_1_00", int("1" * 600), r"key '00003_1+_1_00' is not in the LMDB", "missing_key"),
    ],
)
def test_bad_key_list_entries(
    lupnl: tuple[Path, dict[str, bytes]], key: object, pid: object, complaint: str, reason: str
) -> None:
    """A sixth entry (entry 5) that is bad: an error naming file, entry and key, or skipped and named."""
    root, _ = lupnl
    keys_path = write_keys(root / "keys.pkl", {"keys": [*LUP_KEYS, key], "pids": [*LUP_PIDS, pid]})
    with pytest.raises(ManifestError, match=rf"{keys_path}: entry 5: {complaint}"):
        load_manifest("luperson_nl_lmdb", root)
    manifest = load_manifest("luperson_nl_lmdb", root, strict=False)
    assert manifest.records == expected_lup_records(root / "lmdb")
    assert manifest.skipped == {reason: 1} and skips(manifest) == [("keys.pkl", 5, reason)]


def test_bad_key_list_containers(lupnl: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = lupnl
    path = root / "keys.pkl"
    for payload, complaint in [
        ({"pids": LUP_PIDS}, r"the key list lacks 'keys'"),
        ({"keys": "00001_000012_0000005_00"}, r"'keys' is a str"),
        ({"keys": LUP_KEYS, "pids": LUP_PIDS[:2]}, r"'pids' is 2 pids for 5 keys"),
        ({"keys": []}, r"no keys listed"),
    ]:
        write_keys(path, payload)
        with pytest.raises(ManifestError, match=rf"{path}: {complaint}"):
            load_manifest("luperson_nl_lmdb", root, strict=False)
    path.write_bytes(pickle.dumps({"keys": LUP_KEYS})[:-5])
    with pytest.raises(ManifestError, match=rf"{path}: the LUPerson-NL key list is not a readable pickle"):
        load_manifest("luperson_nl_lmdb", root)
    with pytest.raises(ManifestError, match=r"holds neither lmdb/data\.mdb nor data\.mdb; expected layout"):
        load_manifest("luperson_nl_lmdb", root.parent)
    with pytest.raises(FileNotFoundError, match=r"LUPerson-NL LMDB folder .*nowhere does not exist"):
        load_manifest("luperson_nl_lmdb", root / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"key list .*none\.pkl does not exist"):
        load_manifest("luperson_nl_lmdb", root, keys_file=root / "none.pkl")


class _RunsCode:
    """Pickles as a call of os.mkdir: loading it with pickle.load would create ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.folder),))


def test_pickles_that_are_not_plain_values_are_refused(lupnl: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = lupnl
    path, marker = root / "keys.pkl", root / "created_by_the_pickle"
    write_keys(path, {"keys": LUP_KEYS, "pids": _RunsCode(marker)})
    with pytest.raises(
        ManifestError, match=rf"{path}: the LUPerson-NL key list refers to (posix|nt)\.mkdir; only"
    ):
        load_manifest("luperson_nl_lmdb", root, strict=False)
    assert not marker.exists()  # nothing ran
    write_keys(path, {"keys": LUP_KEYS, "pids": np.asarray(LUP_PIDS)})
    with pytest.raises(ManifestError, match=rf"{path}: .* refers to numpy\..*; only plain values"):
        load_manifest("luperson_nl_lmdb", root)


def test_undecodable_or_missing_values_are_skipped_when_packing(
    lupnl: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, _ = lupnl
    broken = "00003_000001_0000001_00"
    write_lmdb(root / "lmdb", {broken: b"not a JPEG at all" * 4})
    write_keys(root / "keys.pkl", {"keys": [*LUP_KEYS, broken], "pids": [*LUP_PIDS, 1]})
    manifest = load_manifest("luperson_nl_lmdb", root)  # values are not read by the reader
    assert len(manifest) == 6 and manifest.records[-1].source == lmdb_reference(root / "lmdb", broken)
    gone = CropRecord(lmdb_reference(root / "lmdb", "00004_000001_0000001_00"), -1, WHOLE_IMAGE, 4)
    manifest.records.append(gone)
    with pytest.raises(ImageSourceError, match=r"the LMDB has no key '00004_000001_0000001_00'"):
        read_image_bytes(gone.source)
    assert check_files_exist(manifest) == [gone.source]
    with pytest.raises(ImageSourceError, match=r"the LMDB has no key '9+'"):
        read_image_bytes(lmdb_reference(root / "lmdb", "9" * 600))  # longer than LMDB keys can be
    settings = PackSettings(size=SIZE, records_per_shard=4)
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "luperson_nl_lmdb"}, settings, **QUIET)
    assert (report.crops, report.skipped) == (5, {UNREADABLE_IMAGE: 2})
    assert CropShards(tmp_path / "set").skipped() == [
        SkippedRecord(manifest.records[5].source, 5, UNREADABLE_IMAGE),
        SkippedRecord(gone.source, 6, UNREADABLE_IMAGE),
    ]
    strict = PackSettings(size=SIZE, records_per_shard=4, strict=True)
    with pytest.raises(ShardError, match=rf"record 5 \(.*::{broken}\) cannot be packed: unreadable_image"):
        pack_manifest(manifest, tmp_path / "strict", {"kind": "luperson_nl_lmdb"}, strict, **QUIET)


def test_lmdb_listing_without_key_list(tmp_path: Path) -> None:
    """Without keys.pkl, keys that do not parse (or are not text) are named by their place in the LMDB."""
    good = {"00001_000002_0000003_04": jpeg_bytes(1), "00001_000002_0000009_00": jpeg_bytes(2)}
    folder = write_lmdb(tmp_path / "lmdb", {**good, "zz_readme": b"hello"})
    environment = lmdb.open(str(folder), map_size=1 << 24)
    with environment.begin(write=True) as transaction:
        transaction.put(b"\xff\xfe", b"x")
    environment.close()
    with pytest.raises(ManifestError, match=rf"{folder}: key b'\\xff\\xfe' is not text"):
        load_manifest("luperson_nl_lmdb", folder)
    manifest = load_manifest("luperson_nl_lmdb", folder, strict=False)
    assert [r.source for r in manifest.records] == [lmdb_reference(folder, key) for key in good]
    assert manifest.skipped == {"bad_key": 2} and skips(manifest) == [
        ("lmdb", 3, "bad_key"),
        ("lmdb", 2, "bad_key"),
    ]


def test_lmdb_records_survive_a_saved_manifest(lupnl: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, _ = lupnl
    manifest = load_manifest("luperson_nl_lmdb", root)
    saved = save_manifest(manifest, tmp_path / "saved.json")
    assert read_saved_manifest(saved).records == manifest.records
    assert check_files_exist(manifest) == []


def test_a_file_path_with_the_separator_stays_a_file(tmp_path: Path) -> None:
    path = tmp_path / "odd::name.jpg"
    path.write_bytes(jpeg_bytes(3))
    assert split_lmdb_reference(str(path)) is None and read_image_bytes(str(path)) == path.read_bytes()


def test_missing_lmdb_package_is_named(lupnl: tuple[Path, dict[str, bytes]], monkeypatch) -> None:
    root, _ = lupnl
    close_lmdb_environments()
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(ImportError, match=r"needs the 'lmdb' package: pip install lmdb"):
        load_manifest("luperson_nl_lmdb", root)
    assert not image_bytes._environments


# ---------------------------------------------------------------------------------------------------------
# CION-AL


@pytest.fixture
def cional(tmp_path: Path) -> tuple[Path, list[dict], dict[str, bytes]]:
    """``<tmp>/CION_AL/{sec0/, sec1/, cional_annos.json}`` as released: a JSON list of {file_path, id},
    paths relative to the folder, ids counting up from 1 in list order; returns the entries and bytes."""
    root = tmp_path / "CION_AL"
    names = [
        "sec0/0000001.jpg",
        "sec0/0000002.jpg",
        "sec1/0000003.jpg",
        "sec1/0000004.jpg",
        "sec0/0000005.jpg",
    ]
    ids = [1, 1, 2, 3, 3]
    files = {}
    for seed, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        files[name] = jpeg_bytes(100 + seed)
        (root / name).write_bytes(files[name])
    entries = [{"file_path": name, "id": pid} for name, pid in zip(names, ids, strict=True)]
    (root / "cional_annos.json").write_text(json.dumps(entries))
    return root, entries, files


def expected_cion_records(root: Path) -> list[CropRecord]:
    """By hand: ids 1, 2, 3 → 0, 1, 2; sorted by (pid, path)."""
    return [
        CropRecord(str(root / "sec0/0000001.jpg"), -1, WHOLE_IMAGE, 0),
        CropRecord(str(root / "sec0/0000002.jpg"), -1, WHOLE_IMAGE, 0),
        CropRecord(str(root / "sec1/0000003.jpg"), -1, WHOLE_IMAGE, 1),
        CropRecord(str(root / "sec0/0000005.jpg"), -1, WHOLE_IMAGE, 2),
        CropRecord(str(root / "sec1/0000004.jpg"), -1, WHOLE_IMAGE, 2),
    ]


def test_cion_al_records_by_folder_or_annotation_file(
    cional: tuple[Path, list[dict], dict[str, bytes]],
) -> None:
    root, _, _ = cional
    expected = expected_cion_records(root)
    by_folder = load_manifest("cion_al", root)
    assert by_folder.records == expected and by_folder.skipped == {}
    assert by_folder.name == f"cion_al:{root / 'cional_annos.json'}"
    assert load_manifest("cion_al", root / "cional_annos.json").records == expected
    assert load_manifest("cion_json", root / "cional_annos.json").records == expected  # the same format
    (root / "cional_annos.json").rename(root / "cinoal_annos.json")  # the pre-training script's spelling
    assert load_manifest("cion_al", root).records == expected
    (root / "cinoal_annos.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds no cional_annos\.json or cinoal_annos\.json"):
        load_manifest("cion_al", root)
    with pytest.raises(FileNotFoundError, match=r"CION-AL folder .*absent does not exist"):
        load_manifest("cion_al", root / "absent")


def test_cion_al_pack_command_copies_the_files(
    cional: tuple[Path, list[dict], dict[str, bytes]], tmp_path: Path, capsys
) -> None:
    root, _, files = cional
    out = tmp_path / "set"
    command = [
        "pack",
        "--manifest",
        "cion_al",
        str(root),
        "--size",
        "32",
        "16",
        "--out",
        str(out),
        "--strict",
    ]
    assert main(command) == 0
    assert f"packed 5 records into {out}: 5 crops, skipped none;" in capsys.readouterr().out
    shards = CropShards(out)
    expected = expected_cion_records(root)
    for row, record in enumerate(expected):
        assert shards.record(row) == record
        assert shards.jpeg(row) == files[os.path.relpath(record.source, root)]  # byte for byte


def test_cion_al_malformed_entry(cional: tuple[Path, list[dict], dict[str, bytes]]) -> None:
    root, entries, _ = cional
    path = root / "cional_annos.json"
    path.write_text(json.dumps([*entries[:2], {"file_path": "sec1/0000003.jpg", "pid": 2}, *entries[3:]]))
    with pytest.raises(ManifestError, match=rf"{path}: entry 2 lacks key 'id'"):
        load_manifest("cion_al", root)
    manifest = load_manifest("cion_al", root, strict=False)
    assert manifest.skipped == {"bad_entry": 1} and skips(manifest) == [("cional_annos.json", 2, "bad_entry")]
    assert manifest.records == [  # id 2 is gone with its only entry: ids 1, 3 → 0, 1
        CropRecord(str(root / "sec0/0000001.jpg"), -1, WHOLE_IMAGE, 0),
        CropRecord(str(root / "sec0/0000002.jpg"), -1, WHOLE_IMAGE, 0),
        CropRecord(str(root / "sec0/0000005.jpg"), -1, WHOLE_IMAGE, 1),
        CropRecord(str(root / "sec1/0000004.jpg"), -1, WHOLE_IMAGE, 1),
    ]


def test_cion_al_missing_image_file(
    cional: tuple[Path, list[dict], dict[str, bytes]], tmp_path: Path
) -> None:
    root, _, _ = cional
    (root / "sec1/0000004.jpg").unlink()
    manifest = load_manifest("cion_al", root)  # the reader opens no image
    assert manifest.records == expected_cion_records(root)
    missing = str(root / "sec1/0000004.jpg")
    assert check_files_exist(manifest) == [missing]
    settings = PackSettings(size=SIZE, records_per_shard=2)
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "cion_al"}, settings, **QUIET)
    assert (report.crops, report.skipped) == (4, {UNREADABLE_IMAGE: 1})
    assert CropShards(tmp_path / "set").skipped() == [SkippedRecord(missing, 4, UNREADABLE_IMAGE)]
    strict = PackSettings(size=SIZE, records_per_shard=2, strict=True)
    with pytest.raises(
        ShardError, match=r"record 4 \(.*sec1/0000004\.jpg\) cannot be packed: unreadable_image"
    ):
        pack_manifest(manifest, tmp_path / "strict", {"kind": "cion_al"}, strict, **QUIET)


def test_an_lmdb_value_in_another_format_is_reencoded(lupnl: tuple[Path, dict[str, bytes]], tmp_path: Path):
    """A PNG stored in the LMDB is decoded and stored as a JPEG at the pack size (never copied under a JPEG
    name); its pixels survive up to JPEG loss."""
    root, _ = lupnl
    pixels = np.full((SIZE[0], SIZE[1], 3), (200, 40, 90), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    key = LUP_KEYS[0]
    write_lmdb(root / "lmdb", {key: buffer.getvalue()})
    manifest = load_manifest("luperson_nl_lmdb", root)
    report = pack_manifest(manifest, tmp_path / "set", {"kind": "lmdb"}, PackSettings(size=SIZE), **QUIET)
    assert (report.crops, report.skipped) == (5, {})
    shards = CropShards(tmp_path / "set")
    row = next(r for r, record in enumerate(manifest.records) if record.source.endswith(key))
    assert shards.jpeg(row).startswith(b"\xff\xd8")
    assert np.abs(shards.image(row).astype(int) - pixels).max() <= 8
