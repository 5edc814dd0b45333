"""Outcomes, the lease's GPU by UUID, and how the client names its process: no server needed."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import types
from typing import Any, Optional

import pytest

from vramguard_client import Lease, VramguardError, outcome_of
from vramguard_client._client import _pid_namespace, _processes, _start_time

UUID = "GPU-aaaaaaaa-2222-3333-4444-555555555555"


class _OutOfMemoryError(RuntimeError):
    pass


def _torch(uuids: list[str], available: bool = True) -> types.ModuleType:
    """A stand-in torch: GPUs with these UUIDs (torch writes them without the ``GPU-``)."""
    torch = types.ModuleType("torch")
    cuda = types.SimpleNamespace(
        OutOfMemoryError=_OutOfMemoryError,
        is_available=lambda: available,
        device_count=lambda: len(uuids),
        get_device_properties=lambda i: types.SimpleNamespace(uuid=uuids[i].removeprefix("GPU-")),
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
