"""Puts generation jobs on the shared queue: each into the queue of its size class.

    REDIS_URL=redis://queue-host:6379/0 python submit.py --count 40 --sizes 3,6,10,14 --seconds 1

Sizes are used in turn (job i needs sizes[i % len(sizes)] GiB). Prints one job id per line.
"""

import argparse
import os

from redis import Redis
from rq import Queue, Retry

from jobs import generate, queue_name, size_class


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10, help="how many jobs")
    p.add_argument("--sizes", default="4", help="comma-separated VRAM needs in GiB, used in turn")
    p.add_argument("--seconds", type=float, default=5.0, help="how long each job holds its VRAM")
    p.add_argument("--timeout", type=int, default=600, help="RQ ends a job that runs longer (seconds)")
    p.add_argument("--retries", type=int, default=3, help="runs after a failure or a lost worker")
    args = p.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    for i in range(args.count):
        gb = sizes[i % len(sizes)]
        queue = Queue(queue_name(size_class(gb)), connection=redis)
        # The retries are what make a lost worker's job come back: RQ requeues a started job
        # whose worker stopped heartbeating only while it has retries left.
        job = queue.enqueue(
            generate,
            gb,
            args.seconds,
            job_timeout=args.timeout,
            retry=Retry(max=args.retries),
            result_ttl=86400,
        )
        print(job.id, flush=True)


if __name__ == "__main__":
    main()
