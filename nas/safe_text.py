"""Text a user sent, made safe to store, print and log: no control characters, no bidi overrides.

A job name with ESC in it would replay terminal escapes in ``nas jobs``; a newline decoded from
a URL path would forge a line of a text log; a right-to-left override reorders what a reader
sees. Names refuse them at the edge (:func:`check_printable`); every output that prints text from
users escapes them anyway (:func:`escape_controls`), so stored data from older versions is safe too.
"""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls, DEL, and the invisible format characters that reorder or hide text:
# bidi embeddings, overrides and isolates, zero-width characters and the byte-order mark.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def check_printable(text: str) -> str:
    """``text`` unchanged, or ``ValueError`` naming the first control or bidi character in it."""
    found = _UNSAFE.search(text)
    if found is not None:
        char = found.group()
        name = unicodedata.name(char, "a control character")
        raise ValueError(f"control and bidi characters are not allowed: U+{ord(char):04X} ({name}) at position {found.start()}")
    return text


def escape_controls(text: str) -> str:
    """``text`` with every control or bidi character written as a visible escape (``\\x1b``, ``\\u202e``)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


__all__ = ["check_printable", "escape_controls"]
