"""Text for the benchmarks: Tiny Shakespeare from ../shared, or generated text without it."""

from __future__ import annotations

import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
TINY_SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"
SHARED_TIKTOKEN = SHARED_DIR / "tiktoken"
GENERATED_BYTES = 1_000_000
# Common English words; the generated fallback strings them into short sentences.
_COMMON_WORDS = (
    "the of and to in that is was he for it with as his on be at by had not are but from or "
    "have an they which one you were her all she there would their we him been has when who "
    "will more no if out so said what up its about into than them can only other new some"
)


def seed_text() -> tuple[str, str]:
    """(text, where it came from): Tiny Shakespeare when it is there, else generated prose.

    The fallback is ASCII words in short lines, so every tokenizer sees text shaped like a
    corpus (spaces, newlines, punctuation) rather than noise.
    """
    if TINY_SHAKESPEARE.is_file():
        return TINY_SHAKESPEARE.read_text(encoding="utf-8"), "Tiny Shakespeare"
    words = _COMMON_WORDS.split()
    rng = random.Random(0)
    lines: list[str] = []
    size = 0
    while size < GENERATED_BYTES:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "."
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n", "generated text (../shared/data/tinyshakespeare.txt missing)"


def write_corpus(path: Path, text: str, min_bytes: int) -> int:
    """Write `text` repeated until at least `min_bytes`, ending on a line; returns the size.

    Streaming copy by copy keeps this benchmark's own memory small at any corpus size.
    """
    data = text.encode("utf-8")
    written = 0
    with path.open("wb") as out:
        while written < min_bytes:
            needed = min_bytes - written
            if needed < len(data):
                line_end = data.find(b"\n", needed - 1)
                piece = data if line_end < 0 else data[: line_end + 1]
            else:
                piece = data
            out.write(piece)
            written += len(piece)
    return written
