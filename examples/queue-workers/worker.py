"""An RQ worker for one GPU machine: it holds a vramguard lease *before* it takes the next job.

    REDIS_URL=redis://queue-host:6379/0 VRAMGUARD_URL=http://127.0.0.1:9842 python worker.py [--burst]

One job per lease. The lease is sized for a job's size class (its queue) and waits in this
machine's vramguard until the machine has room; only then is a job taken from that queue, and it
is acknowledged (taken off RQ's started-job registry) after it ran. A full machine stops pulling.
"""

import os
import socket
import sys
import time
from contextlib import ExitStack
from typing import Optional, Tuple

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.worker import WorkerStatus
from vramguard_client import QueueFull, Refused, Vramguard, VramguardError

from jobs import SIZE_CLASSES_GB, queue_name

WAIT = float(os.environ.get("LEASE_WAIT_SECONDS", "30"))
TTL = int(os.environ.get("LEASE_TTL_SECONDS", "60"))
MACHINE = os.environ.get("MACHINE", socket.gethostname())


class LeasingWorker(SimpleWorker):  # runs jobs in this process: the lease's pid is the job's
    def __init__(self, vg: Vramguard, redis: Redis) -> None:
        self.class_gb = {queue_name(gb): gb for gb in SIZE_CLASSES_GB}
        queues = [Queue(queue_name(gb), connection=redis) for gb in reversed(SIZE_CLASSES_GB)]
        maintenance = int(os.environ.get("MAINTENANCE_SECONDS", "60"))
        super().__init__(queues, connection=redis, maintenance_interval=maintenance)
        self.vg, self.held = vg, ExitStack()

    def dequeue_job_and_maintain_ttl(
        self, timeout: Optional[int], max_idle_time: Optional[int] = None
    ) -> Optional[Tuple[Job, Queue]]:
        self.set_state(WorkerStatus.IDLE)
        while True:
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()  # type: ignore[no-untyped-call]  # requeues a dead worker's job
            waiting = [q for q in self.queues if q.count]  # the largest class first
            if not waiting and timeout is None:
                return None  # --burst, and nothing is left
            for queue in waiting:
                gb, client = self.class_gb[queue.name], f"{MACHINE}/{self.name}"
                try:
                    with ExitStack() as lease_scope:  # leaving it without pop_all() releases the lease
                        lease = lease_scope.enter_context(
                            self.vg.generation(vram_gb=gb, client=client, ttl_seconds=TTL, wait_seconds=WAIT)
                        )
                        taken = Queue.dequeue_any([queue], None, connection=self.connection)
                        if taken is None:
                            continue  # another worker took the last one while we waited
                        taken[0].meta["vramguard"] = {
                            "gpu": lease.gpu_index,
                            "cuda_visible_devices": lease.cuda_visible_devices,
                            "lease": lease.id,
                            "machine": MACHINE,
                        }
                        taken[0].save_meta()  # type: ignore[no-untyped-call]
                        self.held = lease_scope.pop_all()  # held until the job has run
                        return taken
                except Refused as refused:
                    if refused.queue_position is None:
                        continue  # no GPU here can ever hold this class: try a smaller one
                    break  # waited in vain: look at the queues again
                except QueueFull as full:
                    time.sleep(full.retry_after)
                    break
                except VramguardError as e:  # vramguard restarting: no lease, no job
                    self.log.warning("vramguard: %s", e)
                    time.sleep(1)
                    break
            else:
                time.sleep(0.5)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # dequeue_any moved the job from one queue into that queue's intermediate list; RQ clears
        # that entry only for single-queue workers, and a stale one would be retried a minute later.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            self.held.close()  # release the lease: one job per lease

    def get_heartbeat_ttl(self, job: Job) -> int:
        # A SimpleWorker does not heartbeat during a job, and RQ ends a job at its timeout: a job
        # still "started" 10 s after that has lost its worker, and is requeued (see README).
        return int(job.timeout or Queue.DEFAULT_TIMEOUT) + 10


if __name__ == "__main__":
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    vg = Vramguard(os.environ.get("VRAMGUARD_URL", "http://127.0.0.1:9842"))
    LeasingWorker(vg, redis).work(burst="--burst" in sys.argv[1:])
