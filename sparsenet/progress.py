"""Progress on stderr, one way for every stage: tagged lines (`[study] ...`) and tqdm bars."""
from __future__ import annotations

import sys


def say(tag: str, msg: str, on: bool = True) -> None:
    """One line `[tag] msg` on stderr when `on`."""
    if on:
        print(f"[{tag}] {msg}" if tag else msg, file=sys.stderr, flush=True)


def bar(on: bool = True, **kw):
    """A tqdm bar on stderr (a no-op bar when not `on`); keyword arguments go to tqdm."""
    from tqdm.auto import tqdm
    kw.setdefault("file", sys.stderr)
    return tqdm(disable=not on, **kw)
