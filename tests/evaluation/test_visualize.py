"""Rank-list grid: protocol ranking against a plain loop, and the rendered pixels of a hand-worked case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidscale.evaluation.visualize import (
    BORDER_WIDTH,
    CORRECT_COLOUR,
    EMPTY_COLOUR,
    WRONG_COLOUR,
    ranked_gallery,
    render_rank_list_grid,
    write_png,
)

CELL_HEIGHT, CELL_WIDTH = 48, 32

# Hand-worked gallery for a query with pid 1, camera 0.
GALLERY_PIDS = [1, 2, 1, 1, 3, 1]
GALLERY_CAMS = [0, 1, 1, 0, 0, 2]
DISTANCES = [0.10, 0.20, 0.30, 0.05, 0.30, 0.90]
# g0, g3: same pid and camera → skipped; g2 and g4 tie at 0.30 → lower index first.
EXPECTED_ORDER = [1, 2, 4, 5]
EXPECTED_CORRECT = [False, True, False, True]


def solid_images(folder: Path, prefix: str, colours: list[tuple[int, int, int]]) -> list[str]:
    paths = []
    for index, colour in enumerate(colours):
        path = folder / f"{prefix}_{index}.png"
        Image.new("RGB", (10 + index, 20), colour).save(path)
        paths.append(str(path))
    return paths


GALLERY_COLOURS = [(10 * i, 100, 200 - 10 * i) for i in range(6)]
QUERY_COLOURS = [(250, 250, 0), (0, 250, 250)]


def reference_ranking(distances, qpid, qcam, gpids, gcams, topk):
    order = sorted(range(len(distances)), key=lambda index: (distances[index], index))
    kept = [g for g in order if not (gpids[g] == qpid and gcams[g] == qcam)][:topk]
    return kept, [gpids[g] == qpid for g in kept]


def test_ranked_gallery_hand_worked_case() -> None:
    indices, correct = ranked_gallery(torch.tensor(DISTANCES), 1, 0, GALLERY_PIDS, GALLERY_CAMS, topk=3)
    assert indices.tolist() == EXPECTED_ORDER[:3]
    assert correct.tolist() == EXPECTED_CORRECT[:3]
    indices, _ = ranked_gallery(torch.tensor(DISTANCES), 1, 0, GALLERY_PIDS, GALLERY_CAMS, topk=50)
    assert indices.tolist() == EXPECTED_ORDER  # fewer than topk left after skipping


@pytest.mark.parametrize("seed", range(5))
def test_ranked_gallery_matches_plain_loop_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    distances = rng.integers(0, 6, size=40).astype(np.float32)  # many ties
    gpids, gcams = rng.integers(0, 4, size=40), rng.integers(0, 3, size=40)
    qpid, qcam = int(rng.integers(0, 4)), int(rng.integers(0, 3))
    indices, correct = ranked_gallery(
        torch.from_numpy(distances), qpid, qcam, torch.from_numpy(gpids), gcams, 12
    )
    expected_indices, expected_correct = reference_ranking(distances.tolist(), qpid, qcam, gpids, gcams, 12)
    assert indices.tolist() == expected_indices
    assert correct.tolist() == expected_correct


def pixel(image: Image.Image, row: int, column: int, x: int, y: int) -> tuple[int, int, int]:
    """Pixel at offset (x, y) inside the cell of grid row ``row``, column ``column``."""
    return image.getpixel((column * CELL_WIDTH + x, row * CELL_HEIGHT + y))


def save_grid(output_png: Path, **arguments: object) -> Path:
    """The grid drawn in memory, then written: what ``evaluate --visualize`` does."""
    return write_png(output_png, render_rank_list_grid(**arguments))


def test_grid_layout_borders_and_skipped_items(tmp_path: Path) -> None:
    gallery_paths = solid_images(tmp_path, "gallery", GALLERY_COLOURS)
    query_paths = solid_images(tmp_path, "query", QUERY_COLOURS)
    # Query 1 (pid 1, camera 0) sees the hand-worked row; query 0 (pid 2, camera 1) the reversed distances.
    distmat_rows = torch.tensor([DISTANCES, DISTANCES[::-1]])
    out = save_grid(
        tmp_path / "grids" / "ranks.png",
        query_paths=query_paths,
        gallery_paths=gallery_paths,
        distmat_rows=distmat_rows,
        query_indices=[1, 0],
        query_pids=[2, 1],
        query_camids=[1, 0],
        gallery_pids=GALLERY_PIDS,
        gallery_camids=GALLERY_CAMS,
        topk=5,
        cell_size=(CELL_HEIGHT, CELL_WIDTH),
    )
    assert out == tmp_path / "grids" / "ranks.png"
    assert sorted(p.name for p in out.parent.iterdir()) == ["ranks.png"]  # no temporary file left
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (6 * CELL_WIDTH, 2 * CELL_HEIGHT)
        grid = image.convert("RGB")
    inside = BORDER_WIDTH + 2  # a pixel of the image itself, above the caption strip
    assert pixel(grid, 0, 0, inside, inside) == QUERY_COLOURS[1]
    assert pixel(grid, 1, 0, inside, inside) == QUERY_COLOURS[0]
    for rank, (gallery_index, correct) in enumerate(
        zip(EXPECTED_ORDER, EXPECTED_CORRECT, strict=True), start=1
    ):
        expected_border = CORRECT_COLOUR if correct else WRONG_COLOUR
        for x, y in [(0, 0), (BORDER_WIDTH - 1, CELL_HEIGHT // 2), (CELL_WIDTH - 1, CELL_HEIGHT - 1)]:
            assert pixel(grid, 0, rank, x, y) == expected_border, (rank, x, y)
        assert pixel(grid, 0, rank, inside, inside) == GALLERY_COLOURS[gallery_index]
    assert pixel(grid, 0, 5, CELL_WIDTH // 2, CELL_HEIGHT // 2) == EMPTY_COLOUR  # only 4 valid matches
    # Query pid 2, camera 1 over reversed distances [0.9, 0.3, 0.05, 0.3, 0.2, 0.1]: sorted g2, g5, g4,
    # g1, g3, g0; g1 (pid 2, camera 1) is skipped, and no other item has pid 2.
    for rank, gallery_index in enumerate([2, 5, 4, 3, 0], start=1):
        assert pixel(grid, 1, rank, 0, 0) == WRONG_COLOUR
        assert pixel(grid, 1, rank, inside, inside) == GALLERY_COLOURS[gallery_index]


def grid_arguments(tmp_path: Path) -> dict:
    return {
        "output_png": tmp_path / "grid.png",
        "query_paths": solid_images(tmp_path, "query", QUERY_COLOURS),
        "gallery_paths": solid_images(tmp_path, "gallery", GALLERY_COLOURS),
        "distmat_rows": torch.tensor([DISTANCES]),
        "query_indices": [0],
        "query_pids": [1, 2],
        "query_camids": [0, 0],
        "gallery_pids": GALLERY_PIDS,
        "gallery_camids": GALLERY_CAMS,
        "topk": 3,
        "cell_size": (CELL_HEIGHT, CELL_WIDTH),
    }


def test_missing_image_names_the_path(tmp_path: Path) -> None:
    arguments = grid_arguments(tmp_path)
    missing = str(tmp_path / "nowhere" / "g.jpg")
    arguments["gallery_paths"][2] = missing
    with pytest.raises(FileNotFoundError, match="nowhere"):
        save_grid(**arguments)
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("distmat_rows", torch.tensor([DISTANCES, DISTANCES]), "query_indices"),
        ("distmat_rows", torch.tensor(DISTANCES), "distmat_rows"),
        ("gallery_pids", GALLERY_PIDS[:-1], "gallery_pids"),
        ("query_camids", [0], "query_camids"),
        ("query_indices", [2], "query_indices"),
        ("topk", 0, "topk"),
        ("cell_size", (6, 32), "cell_size"),
        ("output_png", Path("grid.jpg"), "output_png"),
        ("gallery_pids", [0.5] * 6, "gallery_pids"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, field: str, value, message: str) -> None:
    arguments = grid_arguments(tmp_path)
    arguments[field] = value
    with pytest.raises(ValueError, match=message):
        save_grid(**arguments)


def test_render_draws_in_memory_and_write_png_saves_those_pixels(tmp_path: Path) -> None:
    arguments = grid_arguments(tmp_path)
    output_png = arguments.pop("output_png")
    before = sorted(tmp_path.iterdir())
    grid = render_rank_list_grid(**arguments)
    assert sorted(tmp_path.iterdir()) == before  # rendering writes nothing
    assert grid.size == (4 * CELL_WIDTH, CELL_HEIGHT)
    inside = BORDER_WIDTH + 2
    for rank, (gallery_index, correct) in enumerate(
        zip(EXPECTED_ORDER[:3], EXPECTED_CORRECT[:3], strict=True), start=1
    ):
        assert pixel(grid, 0, rank, 0, 0) == (CORRECT_COLOUR if correct else WRONG_COLOUR)
        assert pixel(grid, 0, rank, inside, inside) == GALLERY_COLOURS[gallery_index]
    assert write_png(output_png, grid) == output_png
    with Image.open(output_png) as saved:
        assert saved.format == "PNG"
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(grid))
    with pytest.raises(ValueError, match=r"output_png must end in \.png"):
        write_png(tmp_path / "grid.jpg", grid)
    assert not (tmp_path / "grid.jpg").exists()
