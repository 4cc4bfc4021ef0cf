"""The atomic Redis scripts, kept as .lua files beside the code that loads them."""
from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

_DIR = Path(__file__).resolve().parent


class Script:
    """A script's source and SHA1, for EVALSHA with a NOSCRIPT fallback to SCRIPT LOAD."""

    __slots__ = ("name", "source", "sha")

    def __init__(self, name: str):
        self.name = name
        self.source = (_DIR / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


@cache
def load(name: str) -> Script:
    return Script(name)
