"""Runs the real ``nas serve`` in a subprocess, as a user would: for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from nas.net import free_port


class ServerProcess:
    """``nas serve`` on a free port with its own NAS_HOME; logs go to ``home/serve-N.log``."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.port = free_port()
        self.env = {**os.environ, **env, "NAS_HOME": str(home)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def cli(self, *args: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a ``nas`` subcommand against this server."""
        env = {**self.env, "NAS_URL": self.url}
        if api_key:
            env["NAS_API_KEY"] = api_key
        return subprocess.run(["nas", *args], env=env, capture_output=True, text=True, timeout=600)

    def create_key(self, owner: str) -> str:
        result = self.cli("keys", "create", owner)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def start(self, *args: str, timeout: float = 120.0) -> None:
        """Start ``nas serve`` with extra ``args`` and wait until it answers."""
        self._starts += 1
        log = open(self.home / f"serve-{self._starts}.log", "wb")
        self.process = subprocess.Popen(
            ["nas", "serve", "--port", str(self.port), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nas serve exited with {self.process.returncode}: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"nas serve did not answer within {timeout} s: {self.log()[-3000:]}")

    def log(self) -> str:
        return (self.home / f"serve-{self._starts}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
