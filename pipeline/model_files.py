"""Finding model files inside installed packages, and assembling a model split across packages.

Nothing here downloads: models ship as PyPI packages, and packages are located
with importlib without importing them (some pull in unrelated code on import).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from pipeline.config import ModelSource
from pipeline.errors import ModelNotFound


def package_dir(package: str) -> Path:
    """The installed directory of `package`; ModelNotFound if it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"model package {package!r} is not installed (run `make setup`)")
    return Path(spec.submodule_search_locations[0])


def cache_dir() -> Path:
    return Path(os.environ.get("PARLEY_CACHE", Path.home() / ".cache" / "parley"))


def model_dir(name: str, source: ModelSource) -> Path:
    """A directory holding the model's files, ready to load.

    A model in one package is used where it lies. A split model is assembled
    once into the cache from `<split_file>.partN` in each package, in order,
    with the other files taken from the first package; its sha256 is checked
    before it is used and the cached copy is reused only while it matches.
    """
    dirs = [package_dir(p) / source.directory for p in source.packages]
    if not source.split_file:
        return dirs[0]
    target = cache_dir() / "models" / name
    assembled = target / source.split_file
    stamp = target / f"{source.split_file}.sha256"
    if assembled.is_file() and stamp.is_file() and stamp.read_text().strip() == source.sha256:
        return target
    parts = [d / f"{source.split_file}.part{i}" for i, d in enumerate(dirs, start=1)]
    for part in parts:
        if not part.is_file():
            raise ModelNotFound(f"model {name!r}: missing part {part}")
    target.mkdir(parents=True, exist_ok=True)
    partial = assembled.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if source.sha256 and digest.hexdigest() != source.sha256:
        partial.unlink()
        raise ModelNotFound(
            f"model {name!r}: assembled {source.split_file} has sha256 {digest.hexdigest()}, expected {source.sha256}"
        )
    for extra in dirs[0].iterdir():
        if extra.is_file() and not extra.name.startswith(f"{source.split_file}.part"):
            (target / extra.name).write_bytes(extra.read_bytes())
    os.replace(partial, assembled)
    stamp.write_text(digest.hexdigest())
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cached_model_file(folder: str, name: str, sha256: str) -> Path:
    """A model file that `make setup` put in the cache (`<cache>/models/<folder>/<name>`), checked.

    ModelNotFound, saying what to run, when it is missing or its sha256 is not `sha256`.
    """
    path = cache_dir() / "models" / folder / name
    if not path.is_file():
        raise ModelNotFound(f"model file {path} is missing (run `make setup`)")
    actual = sha256_of(path)
    if actual != sha256:
        raise ModelNotFound(
            f"model file {path} is damaged: sha256 {actual}, expected {sha256} (delete it and run `make setup`)"
        )
    return path
