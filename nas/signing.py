"""The server secret, and short signed tokens made with it (event-stream tokens, pagination cursors).

The secret is 32 random bytes, generated the first time a server process asks for it, in a file
of mode 0600: ``NAS_HOME/server-secret`` unless ``NAS_SECRET_FILE`` names another (a Docker
secret, or one file that several API hosts share). It is deliberately not in the database: a
copy of the database (a backup, a read-only replica) must not be enough to forge a token.
Every API process of one host shares ``NAS_HOME`` and so the file; hosts that share only the
database must be given the same file.

``nas keys rotate-secret`` replaces the secret; each process notices the new file at its next
check (it compares the file's identity on every use, one ``stat``), and every token signed with
the old secret is refused from then on.

A token is ``<payload>.<signature>``: the payload is URL-safe base64 of compact JSON claims
(``exp``, a Unix time, when it expires); the signature is HMAC-SHA256 over a purpose name and the
payload, so a token made for one purpose (``"events"``) is never accepted for another
(``"cursor"``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SECRET_BYTES = 32
MAX_TOKEN_CHARS = 1000  # longer text is not a token this module made
# What every token looks like: base64url JSON (``{"`` encodes as ``eyJ``), a dot, a base64url HMAC-SHA256.
TOKEN_PATTERN = r"^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _write_private(folder: Path, data: bytes) -> str:
    """A temporary file in ``folder`` holding ``data``, mode 0600 (``mkstemp``'s); its path."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".secret.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


class ServerSecret:
    """The secret in ``path``, created on first use and re-read whenever the file is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime ns, size) of the file read
        self._secret = b""

    def _create(self) -> None:
        """Write a new secret unless another process got there first (``link`` refuses to overwrite)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = _write_private(self.path.parent, secrets.token_hex(SECRET_BYTES).encode() + b"\n")
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    def current(self) -> bytes:
        """The secret now in force."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._create()
                stat = self.path.stat()
            identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if identity != self._seen:
                text = self.path.read_text().strip()
                try:
                    secret = bytes.fromhex(text)
                except ValueError:
                    secret = text.encode()  # a secret someone wrote by hand: its bytes
                if len(secret) < 16:
                    raise ValueError(f"the server secret in {self.path} is shorter than 16 bytes")
                self._secret, self._seen = secret, identity
            return self._secret

    def rotate(self) -> None:
        """Replace the secret: every token signed so far is refused from now on."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = _write_private(self.path.parent, secrets.token_hex(SECRET_BYTES).encode() + b"\n")
        os.replace(tmp, self.path)

    def _mac(self, purpose: str, payload: str) -> str:
        message = purpose.encode() + b"\0" + payload.encode()
        return _b64(hmac.new(self.current(), message, hashlib.sha256).digest())

    def sign(self, purpose: str, claims: Mapping[str, Any], ttl_s: float | None = None) -> str:
        """A token carrying ``claims`` (JSON values) for ``purpose``; it expires after ``ttl_s`` seconds."""
        body = dict(claims)
        if ttl_s is not None:
            body["exp"] = int(time.time() + ttl_s)
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def verify(self, purpose: str, token: str) -> dict[str, Any] | None:
        """The claims of a token this server signed for ``purpose`` and that has not expired; else ``None``."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            return None
        payload, signature = token.split(".")
        if not hmac.compare_digest(signature.encode(), self._mac(purpose, payload).encode()):
            return None
        try:
            claims = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(claims, dict):
            return None
        expires = claims.get("exp")
        if expires is not None and (not isinstance(expires, int) or expires < time.time()):
            return None
        return claims


__all__ = ["ServerSecret"]
