"""Outcomes, the lease's GPU by UUID, and how the client names its process: no server needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import parse_qs, urlsplit

import pytest

from vramguard_client import Lease, Vramguard, VramguardError, outcome_of
from vramguard_client._client import _pid_namespace, _processes, _start_time

UUID = "GPU-aaaaaaaa-2222-3333-4444-555555555555"
Json = Dict[str, Any]


class _OutOfMemoryError(RuntimeError):
    pass


def _torch(uuids: List[str], available: bool = True, prefix: bool = False) -> types.ModuleType:
    """A stand-in torch: GPUs with these UUIDs (torch writes them without the ``GPU-``, unless
    ``prefix``)."""
    torch = types.ModuleType("torch")
    cuda = types.SimpleNamespace(
        OutOfMemoryError=_OutOfMemoryError,
        is_available=lambda: available,
        device_count=lambda: len(uuids),
        get_device_properties=lambda i: types.SimpleNamespace(
            uuid=uuids[i] if prefix else uuids[i].removeprefix("GPU-")
        ),
    )
    torch.cuda = cuda  # type: ignore[attr-defined]
    torch.device = lambda name: ("device", name)  # type: ignore[attr-defined]
    return torch


def _lease(uuid: Optional[str] = UUID, index: int = 0) -> Lease:
    gpu: Any = {"index": index, "uuid": uuid} if uuid else None
    return Lease({"id": "a" * 32, "gpu": gpu, "vram_reserved_gb": 4.0, "cuda_visible_devices": uuid})


def test_outcomes_follow_how_the_block_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "oom"
    assert outcome_of(RuntimeError("CUDA error: an illegal memory access")) == "error"
    assert outcome_of(KeyboardInterrupt()) == "cancelled"
    assert outcome_of(asyncio.CancelledError()) == "cancelled"
    assert outcome_of(ValueError("bad prompt")) == "error"
    # torch's own type, found without importing torch: only when the caller already did.
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert outcome_of(_OutOfMemoryError("no words")) == "error"
    monkeypatch.setitem(sys.modules, "torch", _torch([UUID]))
    assert outcome_of(_OutOfMemoryError("no words")) == "oom"


def test_torch_device_is_found_by_uuid_not_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # NVML's GPU 0 is torch's device 1 (CUDA numbers the faster GPU first).
    monkeypatch.setitem(sys.modules, "torch", _torch(["GPU-ffffffff-0000-0000-0000-000000000000", UUID]))
    lease = _lease(UUID, index=0)
    assert lease.cuda_visible_devices == UUID
    assert lease.torch_device() == ("device", "cuda:1")
    # NVML may write the hex in capitals, torch writes it in lower case; either may carry "GPU-".
    assert _lease(UUID.upper(), index=0).torch_device() == ("device", "cuda:1")
    monkeypatch.setitem(
        sys.modules, "torch", _torch(["GPU-ffffffff-0000-0000-0000-000000000000", UUID], prefix=True)
    )
    assert lease.torch_device() == ("device", "cuda:1")
    monkeypatch.setitem(sys.modules, "torch", _torch(["GPU-ffffffff-0000-0000-0000-000000000000", UUID]))
    monkeypatch.setitem(sys.modules, "torch", _torch(["GPU-ffffffff-0000-0000-0000-000000000000"]))
    with pytest.raises(VramguardError, match="CUDA_VISIBLE_DEVICES"):
        lease.torch_device()
    monkeypatch.setitem(sys.modules, "torch", _torch([UUID], available=False))
    with pytest.raises(VramguardError, match="no CUDA"):
        lease.torch_device()
    with pytest.raises(VramguardError, match="no GPU"):
        _lease(None).torch_device()


def test_the_process_is_named_with_its_namespace_and_start_time() -> None:
    assert _pid_namespace() == os.stat("/proc/self/ns/pid").st_ino
    stat = open("/proc/self/stat").read()
    fields = re.match(r"^\d+ \(.*\) (.*)$", stat.strip(), re.S)
    assert fields is not None
    assert _start_time(os.getpid()) == int(fields.group(1).split()[19])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        later = _start_time(child.pid)
        assert later is not None and later >= int(fields.group(1).split()[19])
    finally:
        child.kill()
        child.wait()
    named = _processes(os.getpid())
    assert named["pids"] == [os.getpid()]
    assert named["pid_namespace"] == _pid_namespace()
    assert named["pid_start_times"] == [_start_time(os.getpid())]
    assert _start_time(2**31 - 1) is None


def test_the_start_time_is_read_after_the_last_parenthesis() -> None:
    # A command name with spaces and parentheses: fields counted from the first ')' are wrong.
    comm = "x) 1 2 (y) 3"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"open('/proc/self/comm', 'w').write({comm!r}); print('ready', flush=True); "
            "import time; time.sleep(5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        stat = open(f"/proc/{child.pid}/stat").read()
        assert f"({comm}) " in stat
        assert _start_time(child.pid) == int(stat.split(f"({comm}) ", 1)[1].split()[19])
    finally:
        child.kill()
        child.wait()


def test_fields_proc_cannot_give_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import vramguard_client._client as client

    monkeypatch.setattr(client, "_pid_namespace", lambda: None)
    monkeypatch.setattr(client, "_start_time", lambda pid: None)
    assert client._processes(4242) == {"pids": [4242]}


def test_cuda_visible_devices_is_vramguards_value_else_the_gpus_uuid() -> None:
    mig = "MIG-11111111-2222-3333-4444-555555555555"
    gpu = {"index": 1, "uuid": UUID}
    assert (
        Lease(
            {"id": "b" * 32, "gpu": gpu, "vram_reserved_gb": 4.0, "cuda_visible_devices": mig}
        ).cuda_visible_devices
        == mig
    )
    # An older vramguard does not send the field: the GPU's UUID does the same.
    lease = Lease({"id": "b" * 32, "gpu": gpu, "vram_reserved_gb": 4.0})
    assert lease.cuda_visible_devices == UUID
    gpuless = Lease({"id": "c" * 32, "gpu": None, "vram_reserved_gb": 4.0, "cuda_visible_devices": None})
    assert (gpuless.gpu_uuid, gpuless.cuda_visible_devices) == (None, None)


# -- what goes on the wire, against a stand-in HTTP server -----------------------------------


class _Seen:
    """One request the stand-in server received."""

    def __init__(self, method: str, path: str, query: Dict[str, List[str]], body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.body = body


class _Stub(ThreadingHTTPServer):
    """Answers lease requests with a lease on GPU ``UUID``, heartbeats with 200, releases with
    204; with ``old`` it refuses a release with query parameters (400), as a vramguard older
    than outcomes does."""

    def __init__(self, old: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.old = old
        self.seen: List[_Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def of(self, method: str, suffix: str = "") -> List[_Seen]:
        return [s for s in self.seen if s.method == method and s.path.endswith(suffix)]


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def _answer(self, status: int, body: Optional[Json] = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> _Seen:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = _Seen(self.command, url.path, parse_qs(url.query, keep_blank_values=True), body)
        self.server.seen.append(seen)
        return seen

    def do_POST(self) -> None:  # http.server's name
        seen = self._record()
        if seen.path.endswith("/heartbeat"):
            self._answer(200, {})
            return
        gpu = {"index": 0, "uuid": UUID}
        self._answer(201, {"id": "d" * 32, "gpu": gpu, "vram_reserved_gb": 8.0, "cuda_visible_devices": UUID})

    def do_DELETE(self) -> None:
        seen = self._record()
        if self.server.old and seen.query:
            self._answer(400, {"detail": "unknown query parameter"})
            return
        self._answer(204)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[_Stub]:
    s = _Stub()
    threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


def _peak_torch(peak_bytes: int) -> types.ModuleType:
    """A stand-in torch that already uses CUDA, with ``peak_bytes`` reserved at most on the
    lease's GPU (its device 1)."""
    torch = _torch(["GPU-ffffffff-0000-0000-0000-000000000000", UUID])
    torch.cuda.is_initialized = lambda: True
    torch.cuda.max_memory_reserved = lambda i: peak_bytes if i == 1 else 1
    return torch


def test_the_lease_request_names_the_process(stub: _Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with Vramguard(stub.url).generation(vram_gb=8, ttl_seconds=3) as lease:
        assert lease.cuda_visible_devices == UUID
        deadline = time.monotonic() + 5  # heartbeats every max(3 / 3, 1) s
        while not stub.of("POST", "/heartbeat") and time.monotonic() < deadline:
            time.sleep(0.05)
    (request,) = stub.of("POST", "/generations")
    body = json.loads(request.body)
    stat = open("/proc/self/stat").read()
    start = int(re.sub(r"^.*\) ", "", stat, flags=re.S).split()[19])
    assert body["pids"] == [os.getpid()]
    assert body["pid_namespace"] == os.stat("/proc/self/ns/pid").st_ino
    assert body["pid_start_times"] == [start]
    # Heartbeats carry no body: the processes do not change.
    beats = stub.of("POST", "/heartbeat")
    assert beats and all(b.body == b"" for b in beats)
    # No torch: the outcome alone.
    (release,) = stub.of("DELETE")
    assert release.path == "/api/v1/system/generations/" + "d" * 32
    assert release.query == {"outcome": ["ok"]}


@pytest.mark.parametrize(
    "raised, outcome",
    [
        (None, "ok"),
        (_OutOfMemoryError("no words"), "oom"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (ValueError("bad prompt"), "error"),
        (KeyboardInterrupt(), "cancelled"),
        (asyncio.CancelledError(), "cancelled"),
    ],
    ids=["ok", "torch-oom", "runtime-oom", "error", "ctrl-c", "cancelled-task"],
)
def test_the_release_sends_the_outcome_and_the_peak(
    stub: _Stub, monkeypatch: pytest.MonkeyPatch, raised: Optional[BaseException], outcome: str
) -> None:
    monkeypatch.setitem(sys.modules, "torch", _peak_torch(10 * 2**30))
    with contextlib.ExitStack() as stack:
        if raised is not None:
            stack.enter_context(pytest.raises(type(raised)))
        with Vramguard(stub.url).generation(vram_gb=8):
            if raised is not None:
                raise raised
    (release,) = stub.of("DELETE")
    assert release.query == {"outcome": [outcome], "peak_vram_gb": ["10.0"]}


def test_an_older_vramguard_is_asked_again_without_params(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _peak_torch(10 * 2**30))
    old = _Stub(old=True)
    threading.Thread(target=old.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with pytest.raises(_OutOfMemoryError):
            with Vramguard(old.url).generation(vram_gb=8):
                raise _OutOfMemoryError("CUDA out of memory")
        first, again = old.of("DELETE")
        assert first.query == {"outcome": ["oom"], "peak_vram_gb": ["10.0"]}
        assert again.query == {} and again.path == first.path
    finally:
        old.shutdown()
        old.server_close()
