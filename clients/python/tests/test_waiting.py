"""Waiting admission (``wait_seconds``) against the real vramguard binary and the fake NVML."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import pytest
import requests
from vramguard_server import MISSING, Server

import vramguard_client._client as client_module
from vramguard_client import Lease, QueueFull, Refused, Vramguard, VramguardError

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not set: these tests start the real vramguard binary with the "
    "fake NVML (cargo test --test python_client sets both)",
)

Json = Dict[str, Any]
LEASES = "/api/v1/system/generations"


@pytest.fixture
def one_slot() -> Iterator[Server]:
    """Limit 1: a held lease makes every other request wait for concurrency, a reason that clears."""
    s = Server(limit=1)
    yield s
    s.cleanup()


@pytest.fixture
def one_slot_short_queue() -> Iterator[Server]:
    s = Server(limit=1, extra_config="queue: { max_waiting: 1 }\n")
    yield s
    s.cleanup()


def listed(server: Server) -> List[Json]:
    leases: List[Json] = requests.get(server.url + LEASES, timeout=5).json()["leases"]
    return leases


def take(server: Server) -> str:
    """A lease held behind the client's back; returns its id."""
    r = requests.post(server.url + LEASES, json={"vram_required_gb": 1, "client": "holder"}, timeout=5)
    assert r.status_code == 201, r.text
    lease_id: str = r.json()["id"]
    return lease_id


def release_later(server: Server, lease_id: str, after: float) -> threading.Thread:
    def release() -> None:
        time.sleep(after)
        try:
            requests.delete(f"{server.url}{LEASES}/{lease_id}", timeout=5)
        except requests.RequestException:
            pass  # the test already ended and stopped the server

    t = threading.Thread(target=release, daemon=True)
    t.start()
    return t


class Waiter:
    """A lease request with a wait, run on a thread; keeps the lease (never released by it) or
    the exception."""

    def __init__(self, url: str, wait_seconds: float) -> None:
        self.outcome: Union[Lease, VramguardError, None] = None
        self.thread = threading.Thread(target=self._run, args=(url, wait_seconds), daemon=True)
        self.thread.start()

    def _run(self, url: str, wait_seconds: float) -> None:
        try:
            self.outcome = (
                Vramguard(url).generation(vram_gb=1, client="waiter", wait_seconds=wait_seconds).__enter__()
            )
        except VramguardError as e:
            self.outcome = e


def wait_for_queue(server: Server) -> None:
    deadline = time.monotonic() + 5
    while not requests.get(server.url + LEASES + "/queue", timeout=5).json()["waiting"]:
        assert time.monotonic() < deadline, "no request ever showed in the queue"
        time.sleep(0.05)


class Sent:
    """Records each lease request's body and status as the client sent and received it."""

    def __init__(self, vg: Vramguard, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bodies: List[Json] = []
        self.statuses: List[int] = []
        original: Callable[..., requests.Response] = vg._session.request

        def request(method: str, url: str, **kwargs: Any) -> requests.Response:
            r = original(method, url, **kwargs)
            if method == "POST" and url.endswith(LEASES):
                self.bodies.append(dict(kwargs["json"]))
                self.statuses.append(r.status_code)
            return r

        monkeypatch.setattr(vg._session, "request", request)

    @property
    def waits(self) -> List[Optional[float]]:
        return [b.get("wait_seconds") for b in self.bodies]


def test_waits_until_a_release_admits_it(one_slot: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    held = take(one_slot)
    vg = Vramguard(one_slot.url)
    sent = Sent(vg, monkeypatch)
    release_later(one_slot, held, after=1.5)
    start = time.monotonic()
    with vg.generation(vram_gb=2, client="waiter", wait_seconds=10) as lease:
        waited = time.monotonic() - start
        assert [x["id"] for x in listed(one_slot)] == [lease.id]
    # Admitted by the release (1.5 s in), promptly, in one request that carried the wait.
    assert 1.4 <= waited < 3.0, waited
    assert sent.waits == [10.0]
    assert sent.statuses == [201]
    assert listed(one_slot) == []


def test_deadline_refusal_carries_queue_position_and_retry_after(one_slot: Server) -> None:
    held = take(one_slot)
    vg = Vramguard(one_slot.url)
    start = time.monotonic()
    with pytest.raises(Refused) as refused:
        with vg.generation(vram_gb=2, wait_seconds=1.5):
            pytest.fail("admitted while the only slot was held")
    waited = time.monotonic() - start
    assert 1.4 <= waited < 4.0, waited
    assert refused.value.status == 409
    assert refused.value.queue_position == 1
    assert refused.value.retry_after is not None and refused.value.retry_after >= 0
    assert refused.value.retry_after == int(refused.value.retry_after), "Retry-After is whole seconds"
    assert refused.value.decision["can_start_generation"] is False
    assert [x["id"] for x in listed(one_slot)] == [held]


def test_refusal_that_waiting_cannot_clear_comes_at_once(one_slot: Server) -> None:
    vg = Vramguard(one_slot.url)
    start = time.monotonic()
    with pytest.raises(Refused) as refused:
        with vg.generation(vram_gb=100, wait_seconds=30):
            pytest.fail("a 100 GiB job was admitted on a 24 GiB GPU")
    assert time.monotonic() - start < 3.0
    assert refused.value.queue_position is None
    assert listed(one_slot) == []


def test_a_wait_longer_than_the_server_maximum_is_asked_again(
    one_slot: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's maximum is 300 s; a 1 s stand-in shows the pieces without waiting minutes.
    monkeypatch.setattr(client_module, "MAX_WAIT_SECONDS", 1.0)
    held = take(one_slot)
    vg = Vramguard(one_slot.url)
    sent = Sent(vg, monkeypatch)
    start = time.monotonic()
    with pytest.raises(Refused) as refused:
        with vg.generation(vram_gb=2, wait_seconds=2.5):
            pytest.fail("admitted while the only slot was held")
    assert time.monotonic() - start >= 2.5
    waits = sent.waits
    assert waits[:2] == [1.0, 1.0], waits
    assert len(waits) == 3 and waits[2] is not None and 0 < waits[2] <= 0.5, waits
    assert refused.value.queue_position == 1

    # Admitted in a later piece: the release comes 1.5 s into a 10 s wait cut into 1 s pieces.
    sent.bodies.clear()
    sent.statuses.clear()
    release_later(one_slot, held, after=1.5)
    with vg.generation(vram_gb=2, wait_seconds=10) as lease:
        assert lease.vram_reserved_gb == 2.0
    assert sent.statuses == [409, 201], sent.statuses
    assert sent.waits == [1.0, 1.0]


def test_a_shorter_server_max_wait_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # An operator may hold requests for less than the API's 300 s: the client asks again.
    server = Server(limit=1, extra_config='queue: { max_wait: "1s" }\n')
    try:
        take(server)
        vg = Vramguard(server.url)
        sent = Sent(vg, monkeypatch)
        start = time.monotonic()
        with pytest.raises(Refused) as refused:
            with vg.generation(vram_gb=2, wait_seconds=2.5):
                pytest.fail("admitted while the only slot was held")
        assert time.monotonic() - start >= 2.5
        waits = sent.waits
        assert len(waits) == 3 and waits[0] == 2.5, waits
        assert all(w is not None and 0 < w < 2.5 for w in waits[1:]), waits
        assert sent.statuses == [409, 409, 409]
        assert refused.value.queue_position == 1
    finally:
        server.cleanup()


def test_an_interrupted_wait_leaves_the_queue_and_gets_no_lease(one_slot: Server) -> None:
    held = take(one_slot)
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from vramguard_client import Vramguard; "
            "Vramguard(sys.argv[1]).generation(vram_gb=1, client='interrupted', wait_seconds=30).__enter__()",
            one_slot.url,
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_queue(one_slot)
        waiter.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the wait
        assert waiter.wait(timeout=10) != 0
    finally:
        waiter.kill()
    deadline = time.monotonic() + 5
    while requests.get(one_slot.url + LEASES + "/queue", timeout=5).json()["waiting"]:
        assert time.monotonic() < deadline, "the interrupted request stayed in the queue"
        time.sleep(0.05)
    # The slot frees up; nobody is left to be granted it.
    requests.delete(f"{one_slot.url}{LEASES}/{held}", timeout=5)
    time.sleep(1.0)
    assert listed(one_slot) == []


def test_no_wait_sends_no_field(one_slot: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    vg = Vramguard(one_slot.url)
    sent = Sent(vg, monkeypatch)
    with vg.generation(vram_gb=1):
        pass
    # A vramguard without waiting admission refuses unknown fields; callers that do not wait
    # must keep working against it.
    assert "wait_seconds" not in sent.bodies[0]


def test_fifo_refuses_a_no_wait_request_while_others_wait(one_slot: Server) -> None:
    take(one_slot)
    waiter = Waiter(one_slot.url, wait_seconds=2)
    wait_for_queue(one_slot)
    with pytest.raises(Refused) as refused:
        with Vramguard(one_slot.url).generation(vram_gb=1):
            pytest.fail("overtook a waiting request")
    assert "waiting ahead" in refused.value.detail
    waiter.thread.join()
    assert isinstance(waiter.outcome, Refused) and waiter.outcome.queue_position == 1


def test_queue_full_is_retried_within_the_wait_then_raised(
    one_slot_short_queue: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = one_slot_short_queue
    held = take(server)
    first = Waiter(server.url, wait_seconds=20)
    wait_for_queue(server)

    vg = Vramguard(server.url)
    sent = Sent(vg, monkeypatch)
    with pytest.raises(QueueFull) as full:
        with vg.generation(vram_gb=1, wait_seconds=0.5):
            pytest.fail("admitted past a full queue")
    assert isinstance(full.value, VramguardError) and not isinstance(full.value, Refused)
    assert full.value.status == 503
    assert full.value.retry_after >= 0
    assert sent.statuses[0] == 503

    # With time to spare the 503 is slept off: the holder leaves, the first waiter is admitted
    # and its lease released in turn, and ours, asking again, gets the slot.
    sent.statuses.clear()
    release_later(server, held, after=0.5)

    def release_first_waiter() -> None:
        first.thread.join()
        if isinstance(first.outcome, Lease):  # else the final assertion below reports it
            requests.delete(f"{server.url}{LEASES}/{first.outcome.id}", timeout=5)

    threading.Thread(target=release_first_waiter, daemon=True).start()
    with vg.generation(vram_gb=1, wait_seconds=15) as lease:
        assert lease.vram_reserved_gb == 1.0
    assert sent.statuses[0] == 503 and sent.statuses[-1] == 201, sent.statuses
    assert isinstance(first.outcome, Lease), first.outcome


def test_bad_wait_is_refused_before_any_request() -> None:
    vg = Vramguard("http://127.0.0.1:9")  # nothing listens there; no request may be sent
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            vg.generation(wait_seconds=bad)


def test_a_restart_while_waiting_is_asked_again_within_the_wait(one_slot: Server) -> None:
    """vramguard restarting drops every waiting request; the client asks again with the time it
    has left, and the lease held across the restart (durable) still decides when it gets in."""
    held = take(one_slot)
    waiter = Waiter(one_slot.url, wait_seconds=20)
    wait_for_queue(one_slot)
    one_slot.restart()
    assert [x["client"] for x in listed(one_slot)] == ["holder"], "the held lease survived the restart"
    wait_for_queue(one_slot)  # asked again
    assert waiter.outcome is None
    requests.delete(f"{one_slot.url}{LEASES}/{held}", timeout=5)
    waiter.thread.join(10)
    assert isinstance(waiter.outcome, Lease), waiter.outcome
