"""Dataset readers on tiny fake benchmarks built from empty files; expected values are worked out by hand."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reidscale.data.datasets import (
    DATASET_NAMES,
    ImageRecord,
    ReidDataset,
    load_dataset,
    read_market1501,
    read_market_style_folder,
    read_msmt17,
)


def touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def triples(records: list[ImageRecord]) -> list[tuple[str, int, int]]:
    return [(Path(record.path).name, record.pid, record.camid) for record in records]


MARKET_TRAIN = [
    "0015_c6s4_002202_01.jpg",
    "0007_c2s3_070952_01.jpg",
    "0002_c1s1_000451_03.jpg",
    "0002_c3s1_000551_02.jpg",
    "-1_c1s1_000401_03.jpg",
    "0000_c4s2_000100_01.jpg",
]
MARKET_QUERY = ["0002_c2s1_000301_00.jpg", "0007_c5s1_000801_00.jpg", "-1_c1s1_000001_00.jpg"]
MARKET_GALLERY = [
    "0002_c1s1_000401_01.jpg",
    "0000_c3s1_000151_01.jpg",
    "-1_c2s1_000011_01.jpg",
    "0007_c6s1_010101_02.jpg",
    "Thumbs.db",
    ".DS_Store",
    "._0002_c1s1_000401_01.jpg",
    "readme.txt",
]


def make_market(folder: Path, train=MARKET_TRAIN, query=MARKET_QUERY, gallery=MARKET_GALLERY) -> Path:
    touch(folder / "bounding_box_train", train)
    touch(folder / "query", query)
    touch(folder / "bounding_box_test", gallery)
    return folder


def test_market1501_relabels_drops_junk_and_keeps_gallery_distractors(tmp_path):
    folder = make_market(tmp_path / "Market-1501-v15.09.15")
    dataset = read_market1501(folder)
    # train pids {2, 7, 15} → {0, 1, 2}; junk and the distractor are dropped; sorted by path.
    assert triples(dataset.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c3s1_000551_02.jpg", 0, 2),
        ("0007_c2s3_070952_01.jpg", 1, 1),
        ("0015_c6s4_002202_01.jpg", 2, 5),
    ]
    assert triples(dataset.query) == [("0002_c2s1_000301_00.jpg", 2, 1), ("0007_c5s1_000801_00.jpg", 7, 4)]
    assert triples(dataset.gallery) == [
        ("0000_c3s1_000151_01.jpg", 0, 2),
        ("0002_c1s1_000401_01.jpg", 2, 0),
        ("0007_c6s1_010101_02.jpg", 7, 5),
    ]
    assert dataset.name == "market1501" and dataset.root == str(folder)
    assert all(Path(record.path).is_absolute() and Path(record.path).is_file() for record in dataset.gallery)
    assert (dataset.num_train_pids, dataset.num_train_imgs, dataset.num_train_cams) == (3, 4, 4)
    assert (dataset.num_query_pids, dataset.num_query_imgs, dataset.num_query_cams) == (2, 2, 2)
    assert (dataset.num_gallery_pids, dataset.num_gallery_imgs, dataset.num_gallery_cams) == (3, 3, 3)


def test_market1501_root_may_be_the_parent_and_summary_is_a_table(tmp_path):
    make_market(tmp_path / "Market-1501-v15.09.15")
    from_parent = load_dataset("Market1501", tmp_path)
    assert from_parent == read_market1501(tmp_path / "Market-1501-v15.09.15")
    rows = {line.split("|")[0].strip(): line for line in from_parent.summary().splitlines() if "|" in line}
    cells = {
        split: [int(cell) for cell in rows[split].split("|")[1:]] for split in ("train", "query", "gallery")
    }
    assert cells == {"train": [3, 4, 4], "query": [2, 2, 2], "gallery": [3, 3, 3]}


def test_market_names_match_a_plain_split_reference(tmp_path):
    rng = random.Random(0)
    names = {
        f"{pid:04d}_c{cam}s{rng.randint(1, 6)}_{rng.randint(0, 999999):06d}_{rng.randint(0, 9):02d}.jpg"
        for pid, cam in ((rng.randint(0, 40), rng.randint(1, 6)) for _ in range(200))
    }
    names |= {f"-1_c{rng.randint(1, 6)}s1_{index:06d}_01.jpg" for index in range(20)}
    touch(tmp_path, sorted(names))
    expected = []
    for name in sorted(names):
        pid_text, cam_text = name.split("_")[:2]
        if int(pid_text) != -1:
            expected.append((str(tmp_path / name), int(pid_text), int(cam_text[1]) - 1))
    records = read_market_style_folder(tmp_path)
    assert [(r.path, r.pid, r.camid) for r in records] == expected
    relabelled = read_market_style_folder(tmp_path, relabel=True)
    kept = [row for row in expected if row[1] != 0]
    label_of = {pid: index for index, pid in enumerate(sorted({row[1] for row in kept}))}
    assert [(r.path, r.pid) for r in relabelled] == [(path, label_of[pid]) for path, pid, _ in kept]


def test_read_market_style_folder_distractor_option(tmp_path):
    touch(tmp_path, ["0000_c1_1.png", "0003_c2_1.png", "0009_c1_2.bmp", "0009_c2_1.JPEG"])
    assert [r.pid for r in read_market_style_folder(tmp_path)] == [0, 3, 9, 9]
    assert [r.pid for r in read_market_style_folder(tmp_path, relabel=True)] == [0, 1, 1]
    assert [r.pid for r in read_market_style_folder(tmp_path, relabel=True, keep_distractors=True)] == [
        0,
        1,
        2,
        2,
    ]
    assert [r.pid for r in read_market_style_folder(tmp_path, keep_distractors=False)] == [3, 9, 9]


def test_dukemtmcreid_cameras_one_to_eight(tmp_path):
    make_market(
        tmp_path / "DukeMTMC-reID",
        train=["0005_c8_f0000001.jpg", "0001_c2_f0046182.jpg"],
        query=["0010_c7_f0000002.jpg"],
        gallery=["0010_c1_f0000003.jpg", "0011_c8_f0000004.jpg"],
    )
    dataset = load_dataset("dukemtmcreid", tmp_path)
    assert triples(dataset.train) == [("0001_c2_f0046182.jpg", 0, 1), ("0005_c8_f0000001.jpg", 1, 7)]
    assert triples(dataset.query) == [("0010_c7_f0000002.jpg", 10, 6)]
    assert dataset.name == "dukemtmcreid" and dataset.num_gallery_cams == 2


@pytest.mark.parametrize(
    ("name", "bad_file"), [("market1501", "0003_c7s1_000001_01.jpg"), ("dukemtmcreid", "0003_c9_f1.jpg")]
)
def test_camera_beyond_the_dataset_range_is_an_error(tmp_path, name, bad_file):
    make_market(tmp_path, gallery=[*MARKET_GALLERY[:1], bad_file])
    with pytest.raises(ValueError, match="camera") as error:
        load_dataset(name, tmp_path)
    assert str(tmp_path / "bounding_box_test" / bad_file) in str(error.value)


def make_cuhk03np(folder: Path) -> Path:
    make_market(
        folder / "detected",
        train=["0003_c1_1.png", "0001_c2_7.png"],
        query=["0800_c1_1.png"],
        gallery=["0800_c2_3.png"],
    )
    make_market(
        folder / "labeled", train=["0004_c2_2.png"], query=["0801_c2_1.png"], gallery=["0801_c1_3.png"]
    )
    return folder


def test_cuhk03np_variants_and_roots(tmp_path):
    folder = make_cuhk03np(tmp_path / "cuhk03-np")
    detected = load_dataset("cuhk03np", tmp_path)
    assert detected == load_dataset("cuhk03np", folder, variant="detected")
    assert detected.name == "cuhk03np_detected" and detected.root == str(folder / "detected")
    assert triples(detected.train) == [("0001_c2_7.png", 0, 1), ("0003_c1_1.png", 1, 0)]
    labeled = load_dataset("cuhk03np", folder, variant="labeled")
    assert triples(labeled.train) == [("0004_c2_2.png", 0, 1)]
    assert triples(labeled.query) == [("0801_c2_1.png", 801, 1)]
    assert triples(labeled.gallery) == [("0801_c1_3.png", 801, 0)]


def test_cuhk03np_errors(tmp_path):
    make_cuhk03np(tmp_path)
    with pytest.raises(ValueError, match=r"variant must be one of.*'detected', 'labeled'.*'both'"):
        load_dataset("cuhk03np", tmp_path, variant="both")
    (tmp_path / "labeled" / "query" / "0801_c2_1.png").rename(
        tmp_path / "labeled" / "query" / "0801_c3_1.png"
    )
    with pytest.raises(ValueError, match=r"cameras 1\.\.2") as error:
        load_dataset("cuhk03np", tmp_path, variant="labeled")
    assert "0801_c3_1.png" in str(error.value)
    (tmp_path / "labeled" / "query" / "0801_c3_1.png").unlink()
    (tmp_path / "labeled" / "query").rmdir()
    with pytest.raises(FileNotFoundError, match="lacks query/") as error:
        load_dataset("cuhk03np", tmp_path, variant="labeled")
    assert str(tmp_path / "labeled") in str(error.value) and "bounding_box_train/" in str(error.value)


def test_market_folder_with_and_without_train(tmp_path):
    touch(tmp_path / "query", ["0004_c1s1_000001_00.jpg"])
    touch(
        tmp_path / "gallery", ["0000_c2s1_000001_00.jpg", "0004_c3s1_000001_00.jpg", "-1_c1s1_000001_00.jpg"]
    )
    dataset = load_dataset("market_folder", tmp_path)
    assert dataset.train == [] and dataset.num_train_pids == 0
    assert triples(dataset.gallery) == [("0000_c2s1_000001_00.jpg", 0, 1), ("0004_c3s1_000001_00.jpg", 4, 2)]
    touch(tmp_path / "train", ["0042_c12s1_000001_00.jpg", "0040_c1s1_000001_00.jpg"])
    dataset = load_dataset("market_folder", tmp_path)
    assert triples(dataset.train) == [("0040_c1s1_000001_00.jpg", 0, 0), ("0042_c12s1_000001_00.jpg", 1, 11)]


def test_missing_roots_and_sub_folders_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        read_market1501(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value) and "bounding_box_train/" in str(error.value)
    with pytest.raises(FileNotFoundError, match="found no dataset folder") as error:
        read_market1501(tmp_path)
    assert str(tmp_path / "Market-1501-v15.09.15") in str(error.value) and "query/" in str(error.value)
    touch(tmp_path / "bounding_box_train", ["0001_c1s1_000001_00.jpg"])
    with pytest.raises(FileNotFoundError, match=r"lacks query/, bounding_box_test/") as error:
        read_market1501(tmp_path)
    assert str(tmp_path) in str(error.value) and "└── query/" in str(error.value)
    with pytest.raises(FileNotFoundError, match="lacks query/, gallery/"):
        load_dataset("market_folder", tmp_path)


@pytest.mark.parametrize(
    "bad_name", ["foo.jpg", "0001c1s1_000001_00.jpg", "0001_c1x_0.jpg", "-2_c1s1_0.jpg", "0001_c0s1_0.jpg"]
)
def test_bad_market_file_name_names_the_file_and_the_pattern(tmp_path, bad_name):
    make_market(tmp_path, query=[*MARKET_QUERY, bad_name])
    with pytest.raises(ValueError, match=r"_c<camera>") as error:
        read_market1501(tmp_path)
    assert str(tmp_path / "query" / bad_name) in str(error.value)


def test_folder_without_images_is_an_error(tmp_path):
    make_market(tmp_path, gallery=["Thumbs.db", "notes.txt"])
    with pytest.raises(ValueError, match="holds no images") as error:
        read_market1501(tmp_path)
    assert str(tmp_path / "bounding_box_test") in str(error.value)


def test_load_dataset_rejects_unknown_names_and_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset name 'viper'") as error:
        load_dataset("viper", tmp_path)
    assert all(name in str(error.value) for name in DATASET_NAMES)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['variant'\]; it takes no options"):
        load_dataset("market1501", tmp_path, variant="labeled")
    with pytest.raises(ValueError, match="it takes version, combine_train_val, check_files"):
        load_dataset("msmt17", tmp_path, combine=True)
    with pytest.raises(ValueError, match="split must be one of"):
        ReidDataset(name="x", root="/").subset("val")


MSMT_TRAIN_LIST = [
    "0003/0003_000_15_0303afternoon_0001_0.jpg 3",
    "0000/0000_001_05_0303noon_0100_1.jpg 0",
    "0000/0000_000_01_0303morning_0015_0.jpg 0",
    "0005/0005_002_07_0303morning_0002_0.jpg 5",
]
MSMT_VAL_LIST = ["0005/0005_003_08_0303morning_0004_0.jpg 5", "0001/0001_000_02_0303morning_0003_0.jpg 1"]
MSMT_QUERY_LIST = ["0010/0010_000_03_0303morning_0001_0.jpg 10"]
MSMT_GALLERY_LIST = ["0011/0011_000_14_0303noon_0007_0.jpg 11", "0010/0010_001_04_0303noon_0005_0.jpg 10"]


def make_msmt17(folder: Path, version: str) -> Path:
    train_folder, test_folder = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    for list_name, lines, image_folder in [
        ("list_train.txt", MSMT_TRAIN_LIST, train_folder),
        ("list_val.txt", MSMT_VAL_LIST, train_folder),
        ("list_query.txt", MSMT_QUERY_LIST, test_folder),
        ("list_gallery.txt", MSMT_GALLERY_LIST, test_folder),
    ]:
        touch(folder / image_folder, [line.split()[0] for line in lines])
        (folder / list_name).write_text("\n".join(lines) + "\n")
    return folder


def test_msmt17_v1_lists_cameras_and_relabelling(tmp_path):
    folder = make_msmt17(tmp_path / "MSMT17_V1", "V1")
    dataset = read_msmt17(folder)
    assert dataset.name == "msmt17_v1" and dataset.root == str(folder)
    # train pids {0, 3, 5} → {0, 1, 2}; camid = third '_' field − 1; sorted by path.
    assert triples(dataset.train) == [
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("0000_001_05_0303noon_0100_1.jpg", 0, 4),
        ("0003_000_15_0303afternoon_0001_0.jpg", 1, 14),
        ("0005_002_07_0303morning_0002_0.jpg", 2, 6),
    ]
    assert dataset.train[0].path == str(folder / "train" / "0000" / "0000_000_01_0303morning_0015_0.jpg")
    assert triples(dataset.query) == [("0010_000_03_0303morning_0001_0.jpg", 10, 2)]
    assert triples(dataset.gallery) == [
        ("0010_001_04_0303noon_0005_0.jpg", 10, 3),
        ("0011_000_14_0303noon_0007_0.jpg", 11, 13),
    ]
    assert dataset.gallery[0].path == str(folder / "test" / "0010" / "0010_001_04_0303noon_0005_0.jpg")


def test_msmt17_combine_train_val_relabels_jointly(tmp_path):
    make_msmt17(tmp_path / "MSMT17_V1", "V1")
    dataset = load_dataset("msmt17", tmp_path, combine_train_val=True)
    # train + val pids {0, 1, 3, 5} → {0, 1, 2, 3}.
    assert triples(dataset.train) == [
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("0000_001_05_0303noon_0100_1.jpg", 0, 4),
        ("0001_000_02_0303morning_0003_0.jpg", 1, 1),
        ("0003_000_15_0303afternoon_0001_0.jpg", 2, 14),
        ("0005_002_07_0303morning_0002_0.jpg", 3, 6),
        ("0005_003_08_0303morning_0004_0.jpg", 3, 7),
    ]
    assert (dataset.num_train_pids, dataset.num_train_imgs, dataset.num_train_cams) == (4, 6, 6)
    with pytest.raises(ValueError, match="combine_train_val must be a bool, got 'yes'"):
        load_dataset("msmt17", tmp_path, combine_train_val="yes")


def test_msmt17_version_detection(tmp_path):
    make_msmt17(tmp_path / "MSMT17_V2", "V2")
    dataset = load_dataset("msmt17", tmp_path)
    assert dataset.name == "msmt17_v2" and dataset.root == str(tmp_path / "MSMT17_V2")
    assert dataset.train[0].path == str(
        tmp_path / "MSMT17_V2" / "mask_train_v2" / MSMT_TRAIN_LIST[2].split()[0]
    )
    assert load_dataset("msmt17", tmp_path / "MSMT17_V2", version="v2") == dataset
    with pytest.raises(FileNotFoundError, match="no MSMT17_V1/") as error:
        load_dataset("msmt17", tmp_path, version="V1")
    assert str(tmp_path) in str(error.value) and "├── train/" in str(error.value)
    make_msmt17(tmp_path / "MSMT17_V1", "V1")
    with pytest.raises(ValueError, match=r"found both versions.*pass version="):
        load_dataset("msmt17", tmp_path)
    assert load_dataset("msmt17", tmp_path, version="1").name == "msmt17_v1"
    with pytest.raises(ValueError, match="version must be one of"):
        load_dataset("msmt17", tmp_path, version="V3")


def test_msmt17_missing_folders_and_list_files(tmp_path):
    folder = make_msmt17(tmp_path, "V1")
    (folder / "list_val.txt").unlink()
    assert read_msmt17(folder).num_train_imgs == 4
    with pytest.raises(FileNotFoundError, match=r"list file .*list_val\.txt is missing") as error:
        read_msmt17(folder, combine_train_val=True)
    assert str(folder / "list_val.txt") in str(error.value)
    (folder / "list_gallery.txt").write_text("\n")
    with pytest.raises(ValueError, match="has no entries") as error:
        read_msmt17(folder)
    assert str(folder / "list_gallery.txt") in str(error.value)
    for path in sorted((folder / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (folder / "test").rmdir()
    with pytest.raises(FileNotFoundError, match=r"lacks test/") as error:
        read_msmt17(folder)
    assert str(folder) in str(error.value) and "list_gallery.txt" in str(error.value)


def test_msmt17_missing_listed_image(tmp_path):
    folder = make_msmt17(tmp_path, "V1")
    missing = folder / "test" / MSMT_GALLERY_LIST[1].split()[0]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="1 image") as error:
        read_msmt17(folder)
    assert all(
        text in str(error.value) for text in (str(folder / "list_gallery.txt"), "line 2", str(missing))
    )
    assert read_msmt17(folder, check_files=False).gallery[0].path == str(missing)


@pytest.mark.parametrize(
    "bad_line",
    [
        "0010/0010_000_03_0303morning_0001_0.jpg",
        "0010/0010_000_03_0303morning_0001_0.jpg ten",
        "0010/0010_000_03_0303morning_0001_0.jpg -1",
        "0010/0010_000_00_0303morning_0001_0.jpg 10",
        "0010/0010_000_16_0303morning_0001_0.jpg 10",
        "0010/query.jpg 10",
        "0010/0010_000_03_0303morning_0001_0.jpg 10 extra",
    ],
)
def test_msmt17_malformed_list_line_names_file_and_line(tmp_path, bad_line):
    folder = make_msmt17(tmp_path, "V1")
    (folder / "list_query.txt").write_text(f"{MSMT_QUERY_LIST[0]}\n\n{bad_line}\n")
    with pytest.raises(ValueError, match=r"line 3: expected '<relative/path\.jpg> <pid>'") as error:
        read_msmt17(folder, check_files=False)
    assert str(folder / "list_query.txt") in str(error.value) and bad_line in str(error.value)
