from __future__ import annotations

import os
import re
import time

import pytest
import requests
from conftest import GIB, Server, scenario

from vramguard_client import Refused, Unauthorized, Vramguard


def listed(server: Server) -> list[dict]:  # type: ignore[type-arg]
    leases: list[dict] = requests.get(server.url + "/api/v1/system/generations", timeout=5).json()["leases"]  # type: ignore[type-arg]
    return leases


def test_admitted_lease_is_listed_then_released(server: Server) -> None:
    vg = Vramguard(server.url)
    with vg.generation(vram_gb=4, client="t") as lease:
        assert re.fullmatch(r"[0-9a-f]{32}", lease.id)
        assert lease.gpu_index == 0
        assert lease.gpu_uuid is not None and lease.gpu_uuid.startswith("GPU-")
        assert lease.vram_reserved_gb == 4.0
        assert [x["id"] for x in listed(server)] == [lease.id]
        assert vg.leases()[0]["client"] == "t"
    assert listed(server) == []


def test_refused_carries_the_decision(server: Server) -> None:
    vg = Vramguard(server.url)
    with pytest.raises(Refused) as refused:
        with vg.generation(vram_gb=100):
            pytest.fail("a 100 GiB job was admitted on a 24 GiB GPU")
    assert refused.value.decision["can_start_generation"] is False
    assert refused.value.decision["blocking_issues"]
    assert "generation refused" in refused.value.detail
    assert listed(server) == []


def test_heartbeat_keeps_a_short_lease_alive(server: Server) -> None:
    vg = Vramguard(server.url)
    with vg.generation(vram_gb=1, ttl_seconds=10) as lease:
        time.sleep(30)
        assert [x["id"] for x in listed(server)] == [lease.id]
        assert not lease.lost
    assert listed(server) == []


def test_release_on_exception(server: Server) -> None:
    vg = Vramguard(server.url)
    with pytest.raises(ZeroDivisionError):
        with vg.generation(vram_gb=1):
            assert len(listed(server)) == 1
            _ = 1 / 0
    assert listed(server) == []


def test_pid_attribution(server: Server) -> None:
    me = os.getpid()
    server.set_scenario(scenario([(me, 6 * GIB)]))
    vg = Vramguard(server.url)
    with vg.generation(vram_gb=10, client="attributed") as lease:
        deadline = time.time() + 5
        while True:
            body = next(x for x in listed(server) if x["id"] == lease.id)
            if body["vram_used_gb"] == 6.0 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert body["pids"] == [me]
        assert body["vram_used_gb"] == 6.0
        assert body["vram_outstanding_gb"] == 4.0
        assert body["overrun"] is False


def test_unauthorized_without_the_token(server_with_token: Server) -> None:
    with pytest.raises(Unauthorized):
        with Vramguard(server_with_token.url).generation(vram_gb=1):
            pytest.fail("admitted without a token")
    with Vramguard(server_with_token.url, token="correct-horse-battery-staple").generation(
        vram_gb=1
    ) as lease:
        assert lease.gpu_index == 0


def test_resource_check_and_stats(server: Server) -> None:
    vg = Vramguard(server.url)
    check = vg.resource_check(vram_gb=2)
    assert check["can_start_generation"] is True
    assert check["vram_required_gb"] == 2.0
    assert check["estimate_source"] == "model"
    loaded = vg.resource_check(model_loaded=True)
    assert loaded["vram_required_gb"] < vg.resource_check()["vram_required_gb"]
    stats = vg.stats()
    assert stats["gpu_count"] == 1
    assert stats["vram_total_mb"] == 24576.0
