"""The client against the real vramguard binary and the fake NVML (see vramguard_server.py)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
import types
import uuid
from typing import Any, Dict, List

import pytest
import requests
from vramguard_server import GIB, MISSING, TOKEN, Server, scenario

from vramguard_client import Generation, Refused, Unauthorized, Vramguard, VramguardError

# Skips every test here (exit status 0, reason shown with -rs) when the harness did not set the
# variables; the fixtures never start a server then.
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not set: these tests start the real vramguard binary with the "
    "fake NVML (cargo test --test python_client sets both)",
)

Json = Dict[str, Any]


def listed(server: Server) -> List[Json]:
    """GET /generations without the client, so the client is not testing itself."""
    leases: List[Json] = requests.get(server.url + "/api/v1/system/generations", timeout=5).json()["leases"]
    return leases


def test_admitted_lease_is_listed_then_released(server: Server) -> None:
    vg = Vramguard(server.url)
    gen = vg.generation(vram_gb=4, client="t")
    assert isinstance(gen, Generation)
    with gen as lease:
        assert re.fullmatch(r"[0-9a-f]{32}", lease.id)
        assert lease.gpu_index == 0
        assert lease.gpu_uuid is not None and lease.gpu_uuid.startswith("GPU-")
        assert lease.vram_reserved_gb == 4.0
        assert lease.body["id"] == lease.id
        assert [x["id"] for x in listed(server)] == [lease.id]
        assert vg.leases()[0]["client"] == "t"
    assert listed(server) == []


def test_refused_carries_the_decision(server: Server) -> None:
    vg = Vramguard(server.url)
    with pytest.raises(Refused) as refused:
        with vg.generation(vram_gb=100):
            pytest.fail("a 100 GiB job was admitted on a 24 GiB GPU")
    assert isinstance(refused.value, VramguardError)
    assert refused.value.status == 409
    assert refused.value.decision["can_start_generation"] is False
    assert refused.value.decision["blocking_issues"]
    assert "generation refused" in refused.value.detail
    assert listed(server) == []


@pytest.mark.slow
def test_heartbeat_keeps_a_short_lease_alive(server: Server) -> None:
    vg = Vramguard(server.url)
    with vg.generation(vram_gb=1, ttl_seconds=10) as lease:
        time.sleep(30)
        assert [x["id"] for x in listed(server)] == [lease.id]
        assert not lease.lost
    assert listed(server) == []


def test_lost_lease_is_remembered_not_raised(server: Server) -> None:
    vg = Vramguard(server.url)
    with vg.generation(vram_gb=1, ttl_seconds=10) as lease:
        # Released behind the client's back: the next heartbeat (after 10/3 s) gets a 404.
        assert (
            requests.delete(f"{server.url}/api/v1/system/generations/{lease.id}", timeout=5).status_code
            == 204
        )
        deadline = time.monotonic() + 8
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lease.lost
    # The release at exit found nothing to release and did not raise.
    assert listed(server) == []


def test_release_on_exception(server: Server) -> None:
    vg = Vramguard(server.url)
    with pytest.raises(ZeroDivisionError):
        with vg.generation(vram_gb=1):
            assert len(listed(server)) == 1
            _ = 1 / 0
    assert listed(server) == []


def test_exception_propagates_when_the_release_fails(server: Server) -> None:
    vg = Vramguard(server.url, timeout=2)
    with pytest.raises(ZeroDivisionError), pytest.warns(UserWarning, match="could not release"):
        with vg.generation(vram_gb=1):
            server.stop()
            _ = 1 / 0


def test_pid_attribution(server: Server) -> None:
    me = os.getpid()
    server.set_scenario(scenario([(me, 6 * GIB)]))
    vg = Vramguard(server.url)
    with vg.generation(vram_gb=10, client="attributed") as lease:
        deadline = time.monotonic() + 3
        while True:
            body = next(x for x in listed(server) if x["id"] == lease.id)
            if body["vram_used_gb"] == 6.0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert body["pids"] == [me]
        assert body["pid_namespace"] == os.stat("/proc/self/ns/pid").st_ino
        assert body["attribution"] == "pids"
        assert body["vram_used_gb"] == 6.0
        assert body["vram_outstanding_gb"] == 4.0
        assert body["overrun"] is False
        gpu = requests.get(server.url + "/api/v1/system/stats", timeout=5).json()["gpus"][0]["uuid"]
        assert body["cuda_visible_devices"] == gpu
        assert lease.body["cuda_visible_devices"] == gpu
        assert lease.cuda_visible_devices == gpu


UUID = "GPU-11111111-2222-3333-4444-555555555555"


def test_the_lease_names_this_process_and_its_gpu_by_uuid() -> None:
    server = Server(gpu_uuid=UUID)
    try:
        me = os.getpid()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        vg = Vramguard(server.url)
        with vg.generation(vram_gb=4, client="named") as lease:
            # The 201 answer: the GPU by UUID (not the fake's default), the caller's namespace.
            assert lease.body["cuda_visible_devices"] == UUID
            assert lease.body["pid_namespace"] == namespace
            assert lease.body["attribution"] == "growth"
            assert (lease.gpu_uuid, lease.cuda_visible_devices) == (UUID, UUID)
            body = listed(server)[0]
            assert (body["pids"], body["pid_namespace"]) == ([me], namespace)
            assert body["cuda_visible_devices"] == UUID
            assert body["attribution"] == "growth"  # this process holds no VRAM yet
            # Once NVML reports this process on the GPU, its use is counted by pid.
            server.set_scenario(scenario([(me, 3 * GIB)], uuid=UUID))
            deadline = time.monotonic() + 3
            while body["attribution"] != "pids" and time.monotonic() < deadline:
                time.sleep(0.1)
                body = listed(server)[0]
            assert body["attribution"] == "pids"
            assert body["vram_used_gb"] == 3.0
        assert listed(server) == []
    finally:
        server.cleanup()


def _observations(server: Server) -> List[Json]:
    obs: List[Json] = requests.get(server.url + "/api/v1/system/observations", timeout=5).json()[
        "observations"
    ]
    return obs


def test_the_release_says_how_the_block_ended(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    vg = Vramguard(server.url)
    gpu = requests.get(server.url + "/api/v1/system/stats", timeout=5).json()["gpus"][0]["uuid"]
    torch = _fake_torch(initialized=True, peak_bytes=10 * GIB, gpu_uuid=gpu)

    class OutOfMemoryError(RuntimeError):
        pass

    torch.cuda.OutOfMemoryError = OutOfMemoryError
    monkeypatch.setitem(sys.modules, "torch", torch)
    # Any other exception: released, nothing learned (the run says nothing of the job's size).
    with pytest.raises(ValueError):
        with vg.generation(vram_gb=8):
            raise ValueError("bad prompt")
    assert listed(server) == []
    assert _observations(server) == []
    # Ctrl-C and a cancelled task: released as cancelled, nothing learned either.
    with pytest.raises(KeyboardInterrupt):
        with vg.generation(vram_gb=8):
            raise KeyboardInterrupt
    with pytest.raises(asyncio.CancelledError):
        with vg.generation(vram_gb=8):
            raise asyncio.CancelledError
    assert listed(server) == []
    assert _observations(server) == []
    # torch's out-of-memory: the peak is learned as an OOM.
    with pytest.raises(OutOfMemoryError):
        with vg.generation(vram_gb=8):
            raise OutOfMemoryError("no words: the type says it")
    assert listed(server) == []
    obs = _observations(server)
    assert [(o["outcome"], o["peak_vram_gb"], o["source"]) for o in obs] == [("oom", 10.0, "client")]
    # The RuntimeError older torch raises is an OOM too; a block that ends normally is ok.
    with pytest.raises(RuntimeError):
        with vg.generation(vram_gb=8):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with vg.generation(vram_gb=8):
        pass
    assert listed(server) == []
    assert sorted(o["outcome"] for o in _observations(server)) == ["ok", "oom", "oom"]


def _fake_torch(initialized: bool, peak_bytes: int, gpu_uuid: str) -> types.ModuleType:
    """A torch that sees two GPUs with the lease's GPU second, as under
    ``CUDA_VISIBLE_DEVICES=3,0``: torch's device 1 is NVML's GPU 0."""
    torch = types.ModuleType("torch")
    uuids = [uuid.UUID("12345678-1234-1234-1234-123456789abc"), uuid.UUID(gpu_uuid.removeprefix("GPU-"))]
    cuda = types.SimpleNamespace(
        is_initialized=lambda: initialized,
        device_count=lambda: len(uuids),
        get_device_properties=lambda device: types.SimpleNamespace(uuid=uuids[device]),
        max_memory_reserved=lambda device: peak_bytes if device == 1 else 3 * GIB,
    )
    torch.cuda = cuda  # type: ignore[attr-defined]
    return torch


def _client_peaks(server: Server) -> List[float]:
    obs = requests.get(server.url + "/api/v1/system/observations", timeout=5).json()["observations"]
    return [o["peak_vram_gb"] for o in obs if o["source"] == "client"]


def test_peak_is_reported_only_when_torch_already_uses_cuda(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    vg = Vramguard(server.url)
    gpu = requests.get(server.url + "/api/v1/system/stats", timeout=5).json()["gpus"][0]["uuid"]
    if "torch" not in sys.modules:
        with vg.generation(vram_gb=8):
            pass
        assert "torch" not in sys.modules, "the client must never import torch"
        assert _client_peaks(server) == []

    monkeypatch.setitem(
        sys.modules, "torch", _fake_torch(initialized=False, peak_bytes=7 * GIB, gpu_uuid=gpu)
    )
    with vg.generation(vram_gb=8):
        pass
    assert _client_peaks(server) == []

    monkeypatch.setitem(sys.modules, "torch", _fake_torch(initialized=True, peak_bytes=7 * GIB, gpu_uuid=gpu))
    with vg.generation(vram_gb=8):
        pass
    assert _client_peaks(server) == [7.0]

    # A peak vramguard rejects (over 1024 GiB) still releases the lease.
    monkeypatch.setitem(
        sys.modules, "torch", _fake_torch(initialized=True, peak_bytes=2048 * GIB, gpu_uuid=gpu)
    )
    with vg.generation(vram_gb=8):
        pass
    assert listed(server) == []


def test_unauthorized_without_the_token(server_with_token: Server) -> None:
    with pytest.raises(Unauthorized) as unauthorized:
        with Vramguard(server_with_token.url).generation(vram_gb=1):
            pytest.fail("admitted without a token")
    assert isinstance(unauthorized.value, VramguardError)
    assert unauthorized.value.status == 401
    with pytest.raises(Unauthorized):
        with Vramguard(server_with_token.url, token="wrong-token").generation(vram_gb=1):
            pytest.fail("admitted with a wrong token")
    with Vramguard(server_with_token.url, token=TOKEN).generation(vram_gb=1) as lease:
        assert lease.gpu_index == 0


def test_resource_check_and_stats(server: Server) -> None:
    vg = Vramguard(server.url)
    check = vg.resource_check(vram_gb=2)
    for key in ("can_start_generation", "blocking_issues", "message", "recommendations", "gpu"):
        assert key in check
    assert check["can_start_generation"] is True
    assert check["vram_required_gb"] == 2.0
    assert check["estimate_source"] == "model"
    loaded = vg.resource_check(model_loaded=True)
    assert loaded["vram_required_gb"] < vg.resource_check()["vram_required_gb"]
    assert vg.resource_check(vram_gb=100)["can_start_generation"] is False
    stats = vg.stats()
    assert stats["gpu_count"] == 1
    assert stats["vram_total_mb"] == 24576.0
    assert vg.leases() == []


def test_workload_names_a_profile(server: Server) -> None:
    vg = Vramguard(server.url)
    sized = vg.resource_check(workload="wan2.1-t2v-1.3b", width=480, height=832, frames=49)
    assert sized["estimate"]["workload"] == "wan2.1-t2v-1.3b"
    assert (sized["estimate"]["width"], sized["estimate"]["height"], sized["estimate"]["frames"]) == (
        480,
        832,
        49,
    )
    assert vg.resource_check(vram_gb=2, workload="default")["can_start_generation"] is True
    with vg.generation(vram_gb=2, workload="default") as lease:
        assert lease.gpu_index == 0
    for call in (
        lambda: vg.resource_check(workload="no-such-profile"),
        lambda: vg.generation(workload="no-such-profile").__enter__(),
    ):
        with pytest.raises(VramguardError) as err:
            call()
        assert not isinstance(err.value, Refused)
        assert err.value.status == 400
        assert "no-such-profile" in str(err.value)
    assert listed(server) == []


def test_unreachable_is_a_vramguard_error() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VramguardError) as err:
        Vramguard(f"http://127.0.0.1:{port}", timeout=2).stats()
    assert err.value.status is None


def test_a_job_on_several_gpus_takes_them_all_in_one_lease(server: Server) -> None:
    two = "".join(f"[gpu]\nuuid GPU-{g}{g}{g}\nmemory_total {24 * GIB}\nmemory_used 0\n" for g in range(2))
    server.set_scenario(two)
    vg = Vramguard(server.url)
    deadline = time.monotonic() + 10
    while len(vg.stats()["gpus"]) != 2:
        assert time.monotonic() < deadline, "the second GPU never appeared"
        time.sleep(0.05)
    check = vg.resource_check(vram_gb=4, gpus=2)
    assert [g["rank"] for g in check["gpus"]] == [0, 1]
    with vg.generation(vram_gb=4, gpus=2, client="sharded") as lease:
        assert lease.gpu_indices == [0, 1]
        assert lease.gpu_uuids == ["GPU-000", "GPU-111"]
        assert lease.cuda_visible_devices == "GPU-000,GPU-111"
        assert lease.gpu_index == 0
        (listing,) = listed(server)
        assert [g["index"] for g in listing["gpus"]] == [0, 1]
    assert listed(server) == []
    with vg.generation(vram_gb=4, gpus=2, gpu_indices=[1, 0]) as pinned:
        assert pinned.gpu_indices == [1, 0]
        assert pinned.cuda_visible_devices == "GPU-111,GPU-000"
    with pytest.raises(Refused) as refused:
        with vg.generation(vram_gb=30, gpus=2):
            pytest.fail("two 30 GiB ranks were admitted on 24 GiB GPUs")
    assert "needs 2 GPUs with 30.0 GB each" in str(refused.value)
