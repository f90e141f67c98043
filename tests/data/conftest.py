"""Fixtures for the data tests: the real shared data sets, and small copies to break."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

# ../shared/data relative to the project root (tests/data/conftest.py -> root is parents[2]).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder; tests that need it skip where it is absent."""
    if not (SHARED_DATA / "kaist-demo").is_dir() or not (SHARED_DATA / "mfnet-mini").is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kaist_demo(shared_data: Path) -> Path:
    return shared_data / "kaist-demo"


@pytest.fixture(scope="session")
def mfnet_mini(shared_data: Path) -> Path:
    return shared_data / "mfnet-mini"


def copy_kaist(src: Path, dst: Path, ids: Iterable[str]) -> Path:
    """Copy the listed KAIST frames (images + annotations) from `src` into a new `dst`."""
    for sample_id in ids:
        set_name, video, frame = sample_id.split("/")
        for modality in ("visible", "lwir"):
            rel = Path("images", set_name, video, modality, f"{frame}.png")
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst / rel)
        rel = Path("annotations", set_name, video, f"{frame}.txt")
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)
    return dst


def copy_mfnet(src: Path, dst: Path, names: Iterable[str]) -> Path:
    """Copy the named MFNet images and labels from `src` into a new `dst`."""
    for folder in ("images", "labels"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        for folder in ("images", "labels"):
            shutil.copyfile(src / folder / f"{name}.png", dst / folder / f"{name}.png")
    return dst


@pytest.fixture
def kaist_copy(kaist_demo: Path, tmp_path: Path) -> Path:
    """Two KAIST frames (one day, one night) in a writable folder."""
    return copy_kaist(kaist_demo, tmp_path / "kaist", ["set06/V001/I00459", "set09/V000/I01139"])


@pytest.fixture
def mfnet_copy(mfnet_mini: Path, tmp_path: Path) -> Path:
    """Two MFNet pairs (one day, one night) in a writable folder."""
    return copy_mfnet(mfnet_mini, tmp_path / "mfnet", ["00101D", "00705N"])
