"""Code blocks of the docs, read by the tests that run them, so that what a user copies is what is tested.

A block is marked by an HTML comment on the line before its fence (invisible when the Markdown is
rendered)::

    <!-- snippet: catalog-dag-file -->
    ```python
    ...
    ```
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"<!-- snippet: (?P<name>[\w-]+) -->\n```[\w-]*\n(?P<code>.*?)\n```", re.DOTALL)


def snippet(doc: str, name: str) -> str:
    """The code of the block marked ``name`` in ``doc`` (a path relative to the repository).

    :raises LookupError: no such block (the docs changed: the test must follow).
    """
    text = (REPO / doc).read_text()
    found = [m.group("code") for m in _BLOCK.finditer(text) if m.group("name") == name]
    if len(found) != 1:
        raise LookupError(f"{doc} has {len(found)} code blocks marked 'snippet: {name}', expected one")
    return found[0] + "\n"
