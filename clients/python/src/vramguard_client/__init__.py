"""Client for vramguard's admission API.

A generation takes a *lease* before it starts and releases it when it ends::

    from vramguard_client import Vramguard

    vg = Vramguard("http://127.0.0.1:9842")
    with vg.generation(vram_gb=12, client="worker-1") as lease:
        run_pipeline(device=lease.torch_device())

While the block runs, a daemon thread heartbeats at a third of the TTL, and vramguard attributes
the VRAM of this process (``pids=[os.getpid()]``) to the lease. On exit the lease is released,
also when the block raises; if torch is already imported and CUDA initialised, the measured peak
(``torch.cuda.max_memory_reserved``) is reported so vramguard can learn the workload's real need,
with how the block ended (``oom``, ``error``, ``cancelled`` or ``ok``; see :func:`outcome_of`).
"""

from ._client import (
    MAX_WAIT_SECONDS,
    Generation,
    Lease,
    QueueFull,
    Refused,
    Unauthorized,
    Vramguard,
    VramguardError,
    outcome_of,
)

__all__ = [
    "MAX_WAIT_SECONDS",
    "Generation",
    "Lease",
    "QueueFull",
    "Refused",
    "Unauthorized",
    "Vramguard",
    "VramguardError",
    "outcome_of",
]
