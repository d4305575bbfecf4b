"""Keys people can manage, tokens nobody can forge, private state, and a Ray closed to the network.

Against the real ``nas serve`` (a subprocess, as a user runs it) and the real ``nas`` CLI: keys
are listed (never shown) and revoked with immediate effect, open streams of a revoked key end,
wrong keys do not lock out right ones, event tokens are signed with the server secret (not with
anything in the database) and die with its rotation, NAS_HOME is private, and the local Ray
listens on loopback only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy.engine import make_url

from nas.settings import Settings
from nas.signing import ServerSecret
from benchmarks.server_process import ServerProcess

API = "/api/v1"
SPEC: dict[str, Any] = {
    "name": "keys",
    "search_space": {"name": "sparse_mlp", "params": {"max_depth": 1, "width_choices": [16]}},
    "dataset": {"name": "digits"},
    "training": {"epochs": 1, "batch_size": 64},
    "budget": {"max_trials": 1},
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server without a dispatcher (no Ray): these checks are about the API."""
    home = tmp_path_factory.mktemp("keys") / "home"  # nas serve creates it
    process = ServerProcess(home, {"NAS_DATA_DIR": str(home.parent)})
    home.mkdir(mode=0o755)  # the test harness's logs live here; nas serve must narrow it
    process.start("--max-jobs", "0")
    try:
        yield process
    finally:
        process.stop()


def key_ids(process: ServerProcess) -> dict[int, dict[str, Any]]:
    listed = process.cli("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {item["id"]: item for item in json.loads(listed.stdout)}


def new_key(process: ServerProcess, owner: str, *flags: str) -> tuple[str, int]:
    result = process.cli("keys", "create", owner, *flags)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    newest = max(key_ids(process).values(), key=lambda item: item["id"])
    assert newest["owner"] == owner
    return key, newest["id"]


class Stream:
    """An event stream read in a thread; ``closed`` is set when the server ends it."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.lines: list[str] = []
        self.status: int | None = None
        self.opened, self.closed = threading.Event(), threading.Event()
        threading.Thread(target=self._read, args=(url, kwargs), daemon=True).start()
        assert self.opened.wait(15), "the stream did not answer"

    def _read(self, url: str, kwargs: dict[str, Any]) -> None:
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=60), **kwargs) as response:
                self.status = response.status_code
                self.opened.set()
                for line in response.iter_lines():
                    self.lines.append(line)
        except httpx.HTTPError:
            pass  # the server went away (the module's server stops with streams still open)
        finally:
            self.opened.set()
            self.closed.set()


# -- keys ---------------------------------------------------------------------------------------


def test_keys_are_listed_without_the_key_and_revoked_at_once(server: ServerProcess) -> None:
    alice, alice_id = new_key(server, "alice")
    spare, spare_id = new_key(server, "alice")
    root, _ = new_key(server, "root", "--admin")
    table = server.cli("keys", "list")
    assert table.returncode == 0 and "alice" in table.stdout and "root" in table.stdout
    for listing in (table.stdout, server.cli("keys", "list", "--json").stdout):
        for secret in (alice, spare, root, hashlib.sha256(alice.encode()).hexdigest()):
            assert secret not in listing and secret[4:20] not in listing
    assert key_ids(server)[alice_id]["is_admin"] is False and key_ids(server)[alice_id]["revoked"] is False

    routes = [("GET", f"{API}/jobs"), ("POST", f"{API}/events/token"), ("GET", f"{API}/keys"), ("GET", f"{API}/dashboard/jobs")]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert all(client.request(m, r, headers=bearer(alice)).status_code == 200 for m, r in routes)
        assert key_ids(server)[alice_id]["last_used_at"] is not None
        revoked = server.cli("keys", "revoke", str(alice_id))
        assert revoked.returncode == 0, revoked.stderr
        for method, route in routes:
            assert client.request(method, route, headers=bearer(alice)).status_code == 401, route
        assert client.get(f"{API}/jobs", headers=bearer(spare)).status_code == 200  # only that key
        assert key_ids(server)[alice_id]["revoked"] is True and key_ids(server)[alice_id]["revoked_at"]

        assert server.cli("keys", "revoke", "alice").returncode == 0  # a name: every key of that owner
        assert client.get(f"{API}/jobs", headers=bearer(spare)).status_code == 401
        assert key_ids(server)[spare_id]["revoked"] is True
        assert server.cli("keys", "revoke", "nobody").returncode == 4
        assert client.get(f"{API}/jobs", headers=bearer(root)).status_code == 200


def test_the_keys_routes_show_owners_their_keys_and_admins_all(server: ServerProcess) -> None:
    carol, carol_id = new_key(server, "carol")
    dave, dave_id = new_key(server, "dave")
    root, _ = new_key(server, "root2", "--admin")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        mine = client.get(f"{API}/keys", headers=bearer(carol)).json()["items"]
        assert {item["owner"] for item in mine} == {"carol"}
        everyone = client.get(f"{API}/keys", headers=bearer(root))
        assert {"carol", "dave", "root2"} <= {item["owner"] for item in everyone.json()["items"]}
        assert carol not in everyone.text and dave not in everyone.text and "hash" not in everyone.text
        # another owner's key is not there for carol
        assert client.post(f"{API}/keys/{dave_id}/revoke", headers=bearer(carol)).status_code == 404
        assert client.get(f"{API}/jobs", headers=bearer(dave)).status_code == 200
        answer = client.post(f"{API}/keys/{dave_id}/revoke", headers=bearer(root))
        assert answer.status_code == 200 and answer.json()["revoked_at"] is not None
        assert client.get(f"{API}/jobs", headers=bearer(dave)).status_code == 401
        # an owner may revoke their own key, the one asking included
        assert client.post(f"{API}/keys/{carol_id}/revoke", headers=bearer(carol)).status_code == 200
        assert client.get(f"{API}/keys", headers=bearer(carol)).status_code == 401


def test_a_revoked_keys_open_streams_close_within_seconds(server: ServerProcess) -> None:
    erin, erin_id = new_key(server, "erin")
    root, _ = new_key(server, "root3", "--admin")
    job = httpx.post(f"{server.url}{API}/jobs", json=SPEC, headers=bearer(erin), timeout=30)
    assert job.status_code == 201, job.text
    token = httpx.post(f"{server.url}{API}/events/token", headers=bearer(erin)).json()["token"]
    streams = [
        Stream(f"{server.url}{API}/events", headers=bearer(erin)),
        Stream(f"{server.url}{API}/events", params={"token": token}),
        Stream(f"{server.url}{API}/jobs/{job.json()['id']}/events", params={"token": token}),
    ]
    assert [s.status for s in streams] == [200, 200, 200]
    assert not any(s.closed.wait(0.5) for s in streams)  # open until the key goes
    assert httpx.post(f"{server.url}{API}/keys/{erin_id}/revoke", headers=bearer(root)).status_code == 200
    for stream in streams:
        assert stream.closed.wait(5), "a revoked key's stream is still open after 5 s"
        assert "event: denied" in stream.lines


# -- the server secret --------------------------------------------------------------------------


def forged_token(key: str, claims: dict[str, Any], tmp_path: Path) -> str:
    """A token in the current format, signed with the key's stored hash, as a copy of the database allows."""
    secret = tmp_path / "forged"
    secret.write_text(hashlib.sha256(key.encode()).hexdigest())
    return ServerSecret(secret).sign("events", claims, ttl_s=300)


def test_tokens_are_signed_with_the_server_secret_and_die_with_its_rotation(
    server: ServerProcess, tmp_path: Path
) -> None:
    grace, grace_id = new_key(server, "grace", "--admin")
    url = f"{server.url}{API}/events"
    token = httpx.post(f"{server.url}{API}/events/token", headers=bearer(grace)).json()["token"]
    assert Stream(url, params={"token": token}).status == 200
    forged = forged_token(grace, {"k": grace_id, "o": "grace"}, tmp_path)
    assert httpx.get(url, params={"token": forged}).status_code == 401

    rotated = server.cli("keys", "rotate-secret")
    assert rotated.returncode == 0, rotated.stderr
    assert httpx.get(url, params={"token": token}).status_code == 401  # the outstanding token is void
    fresh = httpx.post(f"{server.url}{API}/events/token", headers=bearer(grace)).json()["token"]
    assert Stream(url, params={"token": fresh}).status == 200
    assert httpx.get(f"{server.url}{API}/jobs", headers=bearer(grace)).status_code == 200  # keys are unaffected


def private_mode_problems(home: Path) -> list[str]:
    """Everything under ``home`` the server made that another user could read or enter."""
    problems = []
    for path in [home, *home.rglob("*")]:
        if path.name.startswith("serve-") and path.suffix == ".log":
            continue  # the test harness's own logs
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            problems.append(f"{path.relative_to(home.parent)}: {oct(mode)}")
    return problems


def test_nas_home_and_the_database_are_private(server: ServerProcess) -> None:
    new_key(server, "heidi")
    home = server.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("nas.db", "nas.db-wal", "nas.db-shm", "server-secret"):
        assert (home / name).is_file(), name  # WAL and shared memory exist while the server runs
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert private_mode_problems(home) == []


# Last of the module's server: it leaves 127.0.0.1 with a minute of 429s for wrong keys.
def test_wrong_keys_from_one_address_do_not_lock_out_a_right_one(server: ServerProcess) -> None:
    frank, _ = new_key(server, "frank")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answers = [client.get(f"{API}/jobs", headers=bearer(f"nas_wrong{i}")).status_code for i in range(12)]
        assert set(answers) == {401, 429} and answers[-1] == 429  # the address is slowed down...
        assert client.get(f"{API}/jobs", headers=bearer(frank)).status_code == 200  # ...but a right key passes
        token = client.post(f"{API}/events/token", headers=bearer(frank))
        assert token.status_code == 200
        assert client.get(f"{API}/jobs", headers=bearer("nas_wrong-again")).status_code == 429
    stream = Stream(f"{server.url}{API}/events", params={"token": token.json()["token"]})
    assert stream.status == 200


def test_the_database_password_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "postgres_password"
    password.write_text("p@ss/w:rd\n")
    monkeypatch.setenv("NAS_DATABASE_URL", "postgresql+psycopg://nas@postgres/nas")
    monkeypatch.setenv("NAS_DATABASE_PASSWORD_FILE", str(password))
    url = make_url(Settings.from_env(home=tmp_path).database_url)
    assert (url.username, url.password, url.host, url.database) == ("nas", "p@ss/w:rd", "postgres", "nas")


# -- Ray ----------------------------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def listening(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening socket of ``root`` and its descendants."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found.append((process.name(), connection.laddr.ip, connection.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.ray
def test_the_local_ray_listens_on_loopback_only_and_artifacts_are_private(
    tmp_path: Path, data_dir: Path
) -> None:
    home = tmp_path / "home"
    process = ServerProcess(home, {"NAS_DATA_DIR": str(data_dir)})
    key = process.create_key("ivan")
    process.start("--max-jobs", "1")
    try:
        with httpx.Client(base_url=process.url, headers=bearer(key), timeout=30) as client:
            job_id = client.post(f"{API}/jobs", json=SPEC).json()["id"]
            deadline = time.monotonic() + 400
            while client.get(f"{API}/jobs/{job_id}").json()["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, process.log()[-3000:]
                time.sleep(1)
            assert client.get(f"{API}/jobs/{job_id}").json()["status"] == "succeeded", process.log()[-3000:]
        assert process.process is not None
        sockets = listening(psutil.Process(process.process.pid))
        names = {name for name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # Ray is up, and its sockets are seen
        assert [s for s in sockets if not is_loopback(s[1])] == []
        assert list((home / "artifacts").rglob("*.safetensors")), "the trial saved its model"
        assert private_mode_problems(home) == []
    finally:
        process.stop()
