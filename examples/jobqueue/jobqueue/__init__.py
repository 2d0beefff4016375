"""A job queue with retries on a supervised pool of workers (see rebeam.toml)."""

from .pool import WORKERS, Pool, Worker
from .queue import QUEUE, Queue, result, status, submit

__all__ = ["QUEUE", "WORKERS", "Pool", "Queue", "Worker", "result", "status", "submit"]
