"""The job the workers run, and the size classes the worker and the submit script share.

Replace :func:`generate` with your pipeline. This one holds ``vram_gb`` of VRAM on the GPU
vramguard placed the job on for ``seconds``: with torch on a real GPU, or, on a machine that is a
fake-NVML stand-in (``FAKE_NVML_SCENARIO`` set, as in vramguard's fleet test), by listing its own
pid with that many bytes in the machine's scenario file, which is what vramguard then reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from rq import get_current_job

#: Lease sizes, GiB. A job waits in the queue of the smallest class that holds it, and the worker
#: that takes it from there has leased the whole class: it reserves at most one step too much.
SIZE_CLASSES_GB = (2, 4, 8, 12, 16, 24, 32, 48, 80)
#: Every finished job appends one JSON line here (job, machine, worker pid, GPU, lease).
DONE_KEY = "queue-workers:done"
GIB = 1 << 30


def size_class(vram_gb: float) -> int:
    for gb in SIZE_CLASSES_GB:
        if vram_gb <= gb:
            return gb
    raise ValueError(f"{vram_gb} GiB is larger than the largest size class ({SIZE_CLASSES_GB[-1]} GiB)")


def queue_name(class_gb: int) -> str:
    return f"gpu-{class_gb}gb"


def generate(vram_gb: float, seconds: float) -> Dict[str, Any]:
    job = get_current_job()
    assert job is not None, "generate runs inside an RQ worker"
    placed: Dict[str, Any] = job.meta["vramguard"]  # the worker's lease: GPU, lease id, machine
    with hold_vram(placed["gpu"], placed.get("cuda_visible_devices"), vram_gb):
        time.sleep(seconds)
    record = dict(placed, job=job.id, pid=os.getpid(), vram_gb=vram_gb, finished=time.time())
    job.connection.rpush(DONE_KEY, json.dumps(record))
    return record


@contextmanager
def hold_vram(gpu: Optional[int], uuid: Optional[str], vram_gb: float) -> Iterator[None]:
    scenario = os.environ.get("FAKE_NVML_SCENARIO")
    if scenario:
        with fake_vram(Path(scenario), gpu or 0, os.getpid(), int(vram_gb * GIB)):
            yield
        return
    import torch  # a real GPU: really allocate it

    # By UUID: the lease's index is NVML's (PCI bus order), CUDA's own order is fastest first.
    want = (uuid or "").lower().removeprefix("gpu-")
    index = next(
        (
            i
            for i in range(torch.cuda.device_count())
            if str(torch.cuda.get_device_properties(i).uuid) == want
        ),
        None,
    )
    if index is None:
        raise RuntimeError(f"the lease's GPU {uuid} is not visible to torch (CUDA_VISIBLE_DEVICES?)")
    block = torch.empty(int(vram_gb * GIB), dtype=torch.uint8, device=f"cuda:{index}")
    try:
        yield
    finally:
        del block
        torch.cuda.empty_cache()


@contextmanager
def fake_vram(scenario: Path, gpu: int, pid: int, nbytes: int) -> Iterator[None]:
    edit_scenario(scenario, gpu, pid, nbytes)
    try:
        yield
    finally:
        edit_scenario(scenario, gpu, pid, None)


def edit_scenario(scenario: Path, gpu: int, pid: int, nbytes: Optional[int]) -> None:
    """Sets (``nbytes``) or removes (None) ``process <pid>`` on GPU ``gpu`` of a fake-NVML scenario
    and moves that GPU's ``memory_used`` by the difference.

    Every job on the machine edits the same file: the edit runs under an exclusive ``flock`` of
    ``<scenario>.lock`` (the fleet test takes the same lock), and the new text replaces the file
    by rename, so vramguard's fake NVML never reads half a file.
    """
    with open(f"{scenario}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = scenario.read_text().splitlines()
        gpus = [i for i, line in enumerate(lines) if line.strip() == "[gpu]"]
        start = gpus[gpu]
        end = gpus[gpu + 1] if gpu + 1 < len(gpus) else len(lines)
        delta = nbytes or 0
        section = []
        for line in lines[start + 1 : end]:
            m = re.fullmatch(r"\s*process\s+(\d+)\s+(\d+)\s*", line)
            if m and int(m.group(1)) == pid:
                delta -= int(m.group(2))
                continue
            section.append(line)
        if nbytes is not None:
            section.append(f"process {pid} {nbytes}")
        used = [i for i, line in enumerate(section) if line.split()[:1] == ["memory_used"]]
        if used:
            section[used[0]] = f"memory_used {int(section[used[0]].split()[1]) + delta}"
        else:  # the fake's default is 0 used
            section.insert(0, f"memory_used {delta}")
        text = "\n".join(lines[: start + 1] + section + lines[end:]) + "\n"
        tmp = scenario.with_name(f"{scenario.name}.{pid}.tmp")
        tmp.write_text(text)
        os.replace(tmp, scenario)
