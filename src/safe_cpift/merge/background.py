"""Hand tensors to a shard writer on a background thread, so writing one overlaps computing the next.

File writes release the GIL and so do torch kernels: with one tensor in flight, fusing costs about
max(compute, write) per tensor instead of their sum, for one extra output tensor of memory.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch

_DONE = object()


class BackgroundWriter:
    """Forward `add(name, tensor)` calls to `writer.add` on one worker thread, in order.

    Args:
        writer: any object with `add(name, tensor)`, e.g. `PlannedShardWriter`.
        depth (`int`, *optional*, defaults to `1`): tensors that may wait while one is being written.

    An exception raised by `writer.add` is re-raised by the next `add` or by `close`. Always end with
    `close()` (which waits for every write) or `abort()` (which drops the queued ones).
    """

    def __init__(self, writer: Any, depth: int = 1) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="safe-cpift-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None or self._stop.is_set():
                continue  # drain without writing after a failure or an abort
            try:
                self.writer.add(*item)
            except BaseException as err:  # handed to the caller's thread
                self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue `tensor` (blocks while `depth` tensors wait); re-raises an earlier write error."""
        self._raise()
        self._queue.put((name, tensor))

    def close(self) -> None:
        """Wait until every queued tensor is written; re-raise a write error."""
        self._queue.put(_DONE)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop writing (queued tensors are dropped) and wait for the worker to finish."""
        self._stop.set()
        self._queue.put(_DONE)
        self._thread.join()
