"""The prompts file of a batch: one prompt a line; '#' starts a comment, blank lines are ignored, and a line may
end with its own ``seed=N`` (e.g. ``a red cube seed=7``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

__all__ = ["PromptLine", "read_prompts"]

_SEED = re.compile(r"\s+seed=(\S+)\s*$")


@dataclass(frozen=True)
class PromptLine:
    index: int
    """Position among the file's prompts (0, 1, ...): the run folder is runs/<index>-<slug>."""
    prompt: str
    seed: int | None
    """The line's own seed, or None for the config's."""
    line: int
    """Line number in the file (1-based), for error messages."""


def read_prompts(path: str | Path) -> list[PromptLine]:
    """The prompts of a file, in order; a one-line UserError for an unreadable or empty file or a bad seed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompts file '{path}' ({getattr(exc, 'strerror', None) or exc}): pass a "
                        f"text file with one prompt a line") from None
    prompts: list[PromptLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        seed = None
        match = _SEED.search(" " + line)
        if match:
            try:
                seed = int(match.group(1))
            except ValueError:
                raise UserError(f"{path}:{number}: seed must be an integer, got 'seed={match.group(1)}'") from None
            line = (" " + line)[:match.start()].strip()
        if not line:
            raise UserError(f"{path}:{number}: a seed without a prompt: write the prompt before seed=")
        prompts.append(PromptLine(len(prompts), line, seed, number))
    if not prompts:
        raise UserError(f"prompts file '{path}' has no prompts: write one prompt a line ('#' starts a comment)")
    return prompts
