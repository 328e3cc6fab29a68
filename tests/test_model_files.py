import hashlib
import importlib
import sys

import pytest

from pipeline.config import ModelSource
from pipeline.errors import ModelNotFound
from pipeline.model_files import model_dir, package_dir


@pytest.fixture
def split_packages(tmp_path, monkeypatch):
    """Two tiny installed packages carrying model.bin in two parts, like the Whisper base packages."""
    site = tmp_path / "site"
    parts = [b"first half of the weights|", b"second half"]
    for i, part in enumerate(parts, start=1):
        data = site / f"parley_test_part{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"model.bin.part{i}").write_bytes(part)
    (site / "parley_test_part1" / "data" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PARLEY_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    return b"".join(parts)


def source(sha256: str) -> ModelSource:
    return ModelSource(
        packages=("parley_test_part1", "parley_test_part2"), directory="data", split_file="model.bin", sha256=sha256
    )


def test_a_split_model_is_assembled_once_and_checked(split_packages):
    good = hashlib.sha256(split_packages).hexdigest()
    folder = model_dir("tiny-test", source(good))
    assert (folder / "model.bin").read_bytes() == split_packages
    assert (folder / "config.json").read_text() == "{}"
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert model_dir("tiny-test", source(good)) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(split_packages, tmp_path):
    with pytest.raises(ModelNotFound, match="expected 0000"):
        model_dir("tiny-bad", source("0" * 64))
    folder = tmp_path / "cache" / "models" / "tiny-bad"
    assert not (folder / "model.bin").exists() and not (folder / "model.partial").exists()


def test_a_missing_package_says_how_to_install_it():
    with pytest.raises(ModelNotFound, match="not installed .*make setup"):
        package_dir("parley_no_such_model_package")
    assert "parley_no_such_model_package" not in sys.modules
