from __future__ import annotations

import asyncio
import importlib
import math
import os
import sys
import threading
import time
import warnings
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Type

import requests

Json = Dict[str, Any]

_LEASES = "/api/v1/system/generations"

#: The longest ``wait_seconds`` vramguard takes in one request; longer waits are sent in pieces.
MAX_WAIT_SECONDS = 300.0
#: Less wait than this left after a piece ends is not asked for again.
_NOT_WORTH_ASKING = 0.05
#: Pause before asking again after the connection to vramguard was lost while waiting, seconds.
_RECONNECT_PAUSE = 0.5


class VramguardError(Exception):
    """vramguard answered with an error, or could not be reached (then ``status`` is None)."""

    def __init__(self, message: str, status: Optional[int] = None, body: Optional[Json] = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = body or {}


class Refused(VramguardError):
    """The generation may not start now; ``decision`` is vramguard's ``resource_check``.

    After a wait that ran out, ``queue_position`` is where the request stood in vramguard's
    admission queue (1 = next) and ``retry_after`` the seconds vramguard suggests before asking
    again (its ``Retry-After``); both are None for a refusal that waiting cannot clear (a job
    larger than every GPU, no GPU at all, an unknown pinned GPU), which comes at once.
    """

    def __init__(
        self,
        detail: str,
        decision: Json,
        body: Json,
        queue_position: Optional[int] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(detail, 409, body)
        self.detail = detail
        self.decision = decision
        self.queue_position = queue_position
        self.retry_after = retry_after


class QueueFull(VramguardError):
    """A 503 to a lease request: vramguard's admission queue is full (``queue.max_waiting``
    requests already wait), or it has no sample yet just after starting. Nothing was reserved;
    ask again after ``retry_after`` seconds. While the caller's ``wait_seconds`` outlasts that
    pause, the client sleeps it off and asks again by itself instead of raising this.
    """

    def __init__(self, message: str, body: Json, retry_after: float) -> None:
        super().__init__(message, 503, body)
        self.retry_after = retry_after


class Unauthorized(VramguardError):
    """The bearer token is missing or wrong (401)."""


class Lease:
    """A granted generation lease. ``gpu_index``/``gpu_uuid`` are None on a host without GPUs.

    Use the GPU by UUID (``cuda_visible_devices``, :meth:`torch_device`), never by ``gpu_index``:
    that is NVML's index (PCI bus order), while CUDA numbers GPUs fastest first, so on a box
    with mixed GPUs an index can name another GPU.
    """

    def __init__(self, body: Json) -> None:
        #: The raw 201 answer.
        self.body = body
        self.id: str = body["id"]
        gpu = body.get("gpu")
        self.gpu_index: Optional[int] = gpu["index"] if gpu else None
        self.gpu_uuid: Optional[str] = gpu["uuid"] if gpu else None
        ranks: List[Json] = body.get("gpus") or ([gpu] if gpu else [])
        #: Every GPU of the lease by NVML index, rank 0 first (one for a one-GPU lease; a job
        #: sharded over several GPUs, ``generation(gpus=N)``, has N; none on a GPU-less host).
        self.gpu_indices: List[int] = [r["index"] for r in ranks]
        #: Their UUIDs, in the same order.
        self.gpu_uuids: List[str] = [r["uuid"] for r in ranks]
        #: The value for ``CUDA_VISIBLE_DEVICES`` that makes the lease's GPUs devices 0, 1, ... of
        #: a process started with it, rank 0 first: their UUIDs, comma-separated (None on a host
        #: without GPUs).
        self.cuda_visible_devices: Optional[str] = body.get("cuda_visible_devices", self.gpu_uuid)
        self.vram_reserved_gb: float = body["vram_reserved_gb"]
        #: True once a heartbeat found the lease gone (expired or released elsewhere); the
        #: heartbeat thread then stops.
        self.lost = False

    def __repr__(self) -> str:
        return (
            f"Lease(id={self.id!r}, gpu_index={self.gpu_index!r}, vram_reserved_gb={self.vram_reserved_gb!r})"
        )

    def torch_device(self) -> Any:
        """The ``torch.device`` of the lease's GPU among the GPUs torch sees, found by UUID.

        Raises :class:`VramguardError` when the lease has no GPU, torch has no CUDA, or no
        visible GPU has the lease's UUID (``CUDA_VISIBLE_DEVICES`` may hide it: set it to
        ``lease.cuda_visible_devices`` before CUDA initialises, or leave it unset).
        """
        if self.gpu_uuid is None:
            raise VramguardError(f"lease {self.id} has no GPU (vramguard runs on a GPU-less host)")
        torch: Any = importlib.import_module("torch")
        if not torch.cuda.is_available():
            raise VramguardError("torch has no CUDA here: the lease's GPU cannot be used")
        index = _torch_index(torch, self.gpu_uuid)
        if index is None:
            raise VramguardError(
                f"no GPU torch sees has the lease's UUID {self.gpu_uuid}; CUDA_VISIBLE_DEVICES may hide it "
                f"(set CUDA_VISIBLE_DEVICES={self.cuda_visible_devices} before CUDA initialises)"
            )
        return torch.device(f"cuda:{index}")


def _torch_index(torch: Any, gpu_uuid: str) -> Optional[int]:
    """The index torch gives the GPU with ``gpu_uuid`` (NVML's ``GPU-…`` form), if it sees it."""
    want = gpu_uuid.lower().removeprefix("gpu-")
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid).lower().removeprefix("gpu-") == want:
            return i
    return None


def outcome_of(exc: Optional[BaseException]) -> str:
    """How a block that raised ``exc`` (None: it did not) ended, as vramguard's release takes it:
    ``oom`` for CUDA out-of-memory, ``cancelled`` for ``KeyboardInterrupt`` and a cancelled
    task, ``error`` for any other exception, ``ok`` otherwise. Never imports torch."""
    if exc is None:
        return "ok"
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    if isinstance(oom_type, type) and isinstance(exc, oom_type):
        return "oom"
    if isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc):
        return "oom"
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return "cancelled"
    return "error"


def _start_time(pid: int) -> Optional[int]:
    """Field 22 of ``/proc/PID/stat`` (clock ticks after boot), counted after the command name's
    last ``)``, which may hold spaces; None where ``/proc`` does not say."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 1 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_namespace() -> Optional[int]:
    """The inode of this process's pid namespace: the namespace ``os.getpid()`` is counted in."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _size(width: Optional[int], height: Optional[int], frames: Optional[int]) -> Dict[str, int]:
    """The video's size as a request gives it: the parts given (vramguard takes the workload
    profile's for the rest)."""
    return {k: v for k, v in (("width", width), ("height", height), ("frames", frames)) if v is not None}


def _processes(pid: int) -> Json:
    """How a lease names process ``pid``: its pid, the namespace it is counted in and its start
    time, so vramguard finds it by the host pid NVML reports even from inside a container."""
    named: Json = {"pids": [pid]}
    namespace = _pid_namespace()
    if namespace is not None:
        named["pid_namespace"] = namespace
    start = _start_time(pid)
    if start is not None:
        named["pid_start_times"] = [start]
    return named


def _torch_peak_gb(gpu_uuid: Optional[str]) -> Optional[float]:
    """torch's peak reserved VRAM on the lease's GPU, GiB, only if the caller already uses CUDA.

    Never imports torch: it is looked up in ``sys.modules`` only. The GPU is found by UUID, not
    by index: vramguard's index is NVML's, while torch numbers only the devices that
    ``CUDA_VISIBLE_DEVICES`` leaves visible, in its order. A GPU torch does not see reports
    nothing rather than another GPU's figure.
    """
    torch = sys.modules.get("torch")
    if torch is None or gpu_uuid is None:
        return None
    try:
        if not torch.cuda.is_initialized():
            return None
        device = _torch_index(torch, gpu_uuid)
        if device is None:
            return None
        peak = float(torch.cuda.max_memory_reserved(device)) / 2**30
    except Exception:  # a client-side measurement must never break the release
        return None
    return peak if peak > 0 else None


class Generation:
    """What :meth:`Vramguard.generation` returns: a context manager that yields a :class:`Lease`.

    Entering asks for the lease, waiting in vramguard's admission queue up to ``wait_seconds``
    (raising :class:`Refused`, :class:`QueueFull`, :class:`Unauthorized` or
    :class:`VramguardError`), then heartbeats from a daemon thread every ``ttl_seconds / 3``.
    Leaving stops the thread and releases the lease, also when the block raises.
    """

    def __init__(self, vg: Vramguard, body: Json, ttl_seconds: int, wait_seconds: float = 0.0) -> None:
        self._vg = vg
        self._body = body
        self._ttl = ttl_seconds
        self._wait = wait_seconds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lease: Optional[Lease] = None

    def __enter__(self) -> Lease:
        self.lease = self._vg._acquire(self._body, self._wait)
        self._thread = threading.Thread(
            target=self._beat, name=f"vramguard-heartbeat-{self.lease.id[:8]}", daemon=True
        )
        self._thread.start()
        return self.lease

    def _beat(self) -> None:
        assert self.lease is not None
        interval = max(self._ttl / 3.0, 1.0)
        while not self._stop.wait(interval):
            try:
                if not self._vg._heartbeat(self.lease.id):
                    self.lease.lost = True
                    return
            except VramguardError:
                # vramguard restarting or briefly failing: try again at the next beat, well
                # inside the TTL; an Unauthorized will not heal, but the release reports it.
                continue

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._vg.timeout + 1)
        if self.lease is None:
            return
        try:
            self._vg._release(self.lease.id, _torch_peak_gb(self.lease.gpu_uuid), outcome_of(exc))
        except VramguardError as e:
            if exc_type is None:
                raise
            # The block's own exception matters more; the lease lapses at its TTL anyway.
            warnings.warn(f"vramguard: could not release lease {self.lease.id}: {e}", stacklevel=2)


class Vramguard:
    """A vramguard endpoint, e.g. ``Vramguard("http://127.0.0.1:9842", token=...)``.

    ``timeout`` (seconds) applies to each HTTP request.
    """

    def __init__(self, base_url: str, token: Optional[str] = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        if token is not None:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def generation(
        self,
        vram_gb: Optional[float] = None,
        client: Optional[str] = None,
        ttl_seconds: int = 60,
        workload: Optional[str] = None,
        model_loaded: bool = False,
        gpu: Optional[int] = None,
        wait_seconds: float = 0.0,
        width: Optional[int] = None,
        height: Optional[int] = None,
        frames: Optional[int] = None,
        gpus: int = 1,
        gpu_indices: Optional[Sequence[int]] = None,
    ) -> Generation:
        """A context manager that holds a lease for the block; raises :class:`Refused` if not admitted.

        ``vram_gb`` defaults to vramguard's estimate for ``workload`` at ``width`` × ``height`` ×
        ``frames`` (each defaulting to the profile's); ``gpu`` pins a GPU index.
        ``gpus`` > 1 takes one lease for a job sharded over that many GPUs (all granted at once or
        none; ``vram_gb`` is then per GPU, the default each rank's estimate), pinned to
        ``gpu_indices`` (rank 0 first) if given; the lease's ``gpu_indices`` and
        ``cuda_visible_devices`` name its GPUs in rank order.
        The lease names this process (``pids=[os.getpid()]``, with the pid namespace it is
        counted in and its start time) so vramguard can see its VRAM, also from a container.
        Leaving the block releases the lease with its outcome (:func:`outcome_of`).

        ``wait_seconds`` > 0 waits in vramguard's admission queue until the generation is
        admitted or that time has passed (``math.inf``: until admitted). vramguard holds one
        request at most :data:`MAX_WAIT_SECONDS` (or its ``queue.max_wait``, if shorter); a
        longer wait is asked again, at the back of the queue, for what is left. A 503 (queue
        full) is slept off for its ``Retry-After`` and asked again while the wait outlasts it.
        """
        if not wait_seconds >= 0:  # also refuses NaN
            raise ValueError(f"wait_seconds must be 0 or more, got {wait_seconds!r}")
        body: Json = {"ttl_seconds": ttl_seconds, "model_loaded": model_loaded, **_processes(os.getpid())}
        if vram_gb is not None:
            body["vram_required_gb"] = vram_gb
        if client is not None:
            body["client"] = client
        if workload is not None:
            body["workload"] = workload
        if gpu is not None:
            body["gpu"] = gpu
        if gpus != 1:
            body["gpus"] = gpus
        if gpu_indices is not None:
            body["gpu_indices"] = list(gpu_indices)
        body.update(_size(width, height, frames))
        return Generation(self, body, ttl_seconds, wait_seconds)

    def resource_check(
        self,
        vram_gb: Optional[float] = None,
        model_loaded: bool = False,
        workload: Optional[str] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        frames: Optional[int] = None,
        gpus: int = 1,
    ) -> Json:
        """May a generation start now? The ``resource_check`` dict (read-only, reserves nothing).
        Its ``estimate`` is vramguard's estimate for the job (the profile's video where
        ``width``/``height``/``frames`` are left out); with ``gpus`` > 1, for a job sharded over
        that many GPUs, whose ``gpus`` list says where each rank would go."""
        params: Dict[str, str] = {"model_loaded": "true" if model_loaded else "false"}
        if gpus != 1:
            params["gpus"] = str(gpus)
        if vram_gb is not None:
            params["vram_required_gb"] = repr(float(vram_gb))
        if workload is not None:
            params["workload"] = workload
        params.update({k: str(v) for k, v in _size(width, height, frames).items()})
        return self._json("GET", "/api/v1/system/resource-check", params=params)

    def stats(self) -> Json:
        """Current readings."""
        return self._json("GET", "/api/v1/system/stats")

    def leases(self) -> List[Json]:
        """Live leases, oldest first (the ``leases`` list of ``GET /generations``)."""
        leases: List[Json] = self._json("GET", _LEASES)["leases"]
        return leases

    # -- internals --------------------------------------------------------------------------

    def _request(self, method: str, path: str, wait: float = 0.0, **kwargs: Any) -> requests.Response:
        """``wait``: seconds vramguard may hold the request before it answers, on top of ``timeout``."""
        try:
            r = self._session.request(
                method, self.base_url + path, timeout=(self.timeout, self.timeout + wait), **kwargs
            )
        except requests.RequestException as e:
            raise VramguardError(f"{method} {path}: {e}") from e
        if r.status_code == 401:
            raise Unauthorized(_detail(r), 401, _body(r))
        return r

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        r = self._request(method, path, **kwargs)
        if r.status_code >= 400:
            raise VramguardError(f"{method} {path}: {r.status_code} {_detail(r)}", r.status_code, _body(r))
        return _ok_body(r, f"{method} {path}")

    def _acquire(self, body: Json, wait_seconds: float = 0.0) -> Lease:
        deadline = time.monotonic() + wait_seconds
        while True:
            wait = min(max(deadline - time.monotonic(), 0.0), MAX_WAIT_SECONDS)
            # Without a wait the field stays out, so a vramguard older than waiting admission
            # (which refuses unknown fields) still serves callers that do not wait.
            request = dict(body, wait_seconds=round(wait, 3)) if wait_seconds > 0 else body
            try:
                r = self._request("POST", _LEASES, wait=wait, json=request)
            except Unauthorized:
                raise
            except VramguardError:
                # The connection was lost (vramguard restarting drops every waiting request):
                # with time left to wait, ask again, as the restarted vramguard expects.
                if wait_seconds > 0 and deadline - time.monotonic() > _RECONNECT_PAUSE + _NOT_WORTH_ASKING:
                    time.sleep(_RECONNECT_PAUSE)
                    continue
                raise
            if r.status_code == 201:
                return Lease(_ok_body(r, "lease request"))
            left = deadline - time.monotonic()
            if r.status_code == 409:
                answer = _body(r)
                position = answer.get("queue_position")
                refused = Refused(
                    str(answer.get("detail", "generation refused")),
                    answer.get("resource_check", {}),
                    answer,
                    position if isinstance(position, int) else None,
                    _retry_after(r),
                )
                # A queue position means it waited as long as vramguard would hold it: the piece
                # asked for, or less where the operator set a shorter queue.max_wait. Time left
                # (more than a moment) is asked for again.
                if refused.queue_position is not None and left > _NOT_WORTH_ASKING:
                    continue
                raise refused
            if r.status_code == 503:
                retry_after = _retry_after(r) or 1.0
                # Asking again is worth it only with time left to wait after the pause.
                if left > retry_after + _NOT_WORTH_ASKING:
                    time.sleep(retry_after)
                    continue
                raise QueueFull(f"lease request: 503 {_detail(r)}", _body(r), retry_after)
            raise VramguardError(f"lease request: {r.status_code} {_detail(r)}", r.status_code, _body(r))

    def _heartbeat(self, lease_id: str) -> bool:
        """Extends the lease; False when vramguard no longer knows it. Sends no body."""
        r = self._request("POST", f"{_LEASES}/{lease_id}/heartbeat")
        if r.status_code == 404:
            return False
        if r.status_code != 200:
            raise VramguardError(f"heartbeat: {r.status_code} {_detail(r)}", r.status_code, _body(r))
        return True

    def _release(self, lease_id: str, peak_gb: Optional[float], outcome: str = "ok") -> None:
        params = {"outcome": outcome}
        if peak_gb is not None:
            params["peak_vram_gb"] = repr(peak_gb)
        r = self._request("DELETE", f"{_LEASES}/{lease_id}", params=params)
        if r.status_code == 400:
            # A peak vramguard will not take (out of its range), or a vramguard older than
            # outcomes: the lease must not stay held.
            r = self._request("DELETE", f"{_LEASES}/{lease_id}")
        # 404: already expired; nothing is held. 202: the slot is free, vramguard retries
        # writing the release to its store.
        if r.status_code not in (202, 204, 404):
            raise VramguardError(f"release: {r.status_code} {_detail(r)}", r.status_code, _body(r))


def _ok_body(r: requests.Response, what: str) -> Json:
    try:
        body = r.json()
    except ValueError as e:
        raise VramguardError(f"{what}: {r.status_code} answer is not JSON", r.status_code) from e
    if not isinstance(body, dict):
        raise VramguardError(f"{what}: {r.status_code} answer is not a JSON object", r.status_code)
    return body


def _body(r: requests.Response) -> Json:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(r: requests.Response) -> Optional[float]:
    """``Retry-After`` in seconds; None when absent or an HTTP date (vramguard sends seconds)."""
    try:
        value = float(r.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _detail(r: requests.Response) -> str:
    return str(_body(r).get("detail", r.reason))
