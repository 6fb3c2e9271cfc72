"""Test fixtures for fine-tuning: a tiny synthetic Market-1501 folder of coloured people, and a tiny CNN
backbone, shared by the dataset, objective, extraction and engine tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

DISK_SIZE = (60, 28)  # (height, width) of the files; the transforms resize to other sizes
CAMERA_GAINS = np.array([[1.15, 0.95, 0.75], [0.75, 0.95, 1.2], [1.0, 1.15, 0.85]])


def _person(rng: np.random.Generator, colours: np.ndarray, camera: int) -> np.ndarray:
    """A person photo: textured grey background of random brightness, torso colour over legs colour at a
    jittered position, tinted by the camera, with noise.  Returns uint8 [H, W, 3]."""
    height, width = DISK_SIZE
    grey = rng.uniform(40, 215) + rng.normal(0, 25, (height, width, 1))
    image = np.repeat(grey, 3, axis=2)
    left = 7 + int(rng.integers(-3, 4))
    top = 6 + int(rng.integers(-3, 4))
    image[top : top + 24, left : left + 14] = colours[0]
    image[top + 24 : top + 48, left + 2 : left + 12] = colours[1]
    image = image * CAMERA_GAINS[camera] + rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_tiny_market(
    root: Path, num_train: int = 12, num_test: int = 10, train_per_cam: int = 3, seed: int = 0
) -> dict[str, list[tuple[str, int, int]]]:
    """A Market-1501 folder (bounding_box_train/, query/, bounding_box_test/) of coloured people.

    Train ids 1..num_train: ``train_per_cam`` images in each of cameras 1–2; test ids after them: one query
    in camera 1, two gallery images in each of cameras 2 and 3; 3 distractors (pid 0) and 2 junk images
    (pid −1) in the gallery. Names ``PPPP_cCs1_FFFFFF_01.png``.
    Returns split folder → [(path, original pid, 0-based camera)] of the non-junk images written.
    """
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[str, int, int]]] = {}
    counter = iter(range(1, 10**6))

    def save(folder: str, pid: int, camera: int, colours: np.ndarray) -> None:
        path = root / folder / f"{pid:04d}_c{camera + 1}s1_{next(counter):06d}_01.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_person(rng, colours, camera)).save(path)
        if pid >= 0:
            written.setdefault(folder, []).append((str(path), pid, camera))

    for pid in range(1, num_train + num_test + 1):
        colours = rng.uniform(0, 255, (2, 3))
        if pid <= num_train:
            for camera in (0, 1):
                for _ in range(train_per_cam):
                    save("bounding_box_train", pid, camera, colours)
            continue
        save("query", pid, 0, colours)
        for camera in (1, 2, 1, 2):
            save("bounding_box_test", pid, camera, colours)
    for pid, camera in ((0, 0), (0, 1), (0, 2), (-1, 1), (-1, 2)):
        save("bounding_box_test", pid, camera, rng.uniform(0, 255, (2, 3)))
    return written


class TinyBackbone(nn.Module):
    """Three strided conv-BN-ReLU blocks and global average pooling: [B, 3, H, W] → [B, 32]."""

    feature_dim = 32

    def __init__(self) -> None:
        super().__init__()
        widths = (3, 16, 32, 32)
        blocks = []
        for cin, cout in itertools.pairwise(widths):
            blocks += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
        self.body = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images).mean(dim=(2, 3))
