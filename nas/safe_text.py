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
_UNSAFE_RANGES = ((0x00, 0x1F), (0x7F, 0x9F), (0x61C, 0x61C), (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2069),
                  (0xFEFF, 0xFEFF))  # fmt: skip


def _unsafe_class(allow: str = "") -> str:
    """The unsafe characters as the inside of a regex class, less those in ``allow``."""
    allowed = sorted(map(ord, allow))
    parts = []
    for start, end in _UNSAFE_RANGES:
        for code in [c for c in allowed if start <= c <= end]:
            if start < code:
                parts.append((start, code - 1))
            start = code + 1
        if start <= end:
            parts.append((start, end))
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in parts)


_UNSAFE = re.compile(f"[{_unsafe_class()}]")


def printable_pattern(allow: str = "") -> str:
    """The JSON Schema ``pattern`` of text :func:`check_printable` accepts, with the characters of
    ``allow`` (``"\\t\\n"``) let through too: what the OpenAPI document states for such fields."""
    return f"^[^{_unsafe_class(allow)}]*$"


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


__all__ = ["check_printable", "escape_controls", "printable_pattern"]
