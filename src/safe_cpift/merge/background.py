"""Hand tensors to a shard writer on a background thread, so writing one overlaps computing the next.

File writes release the GIL and so do torch kernels: with one tensor in flight, fusing costs about
max(compute, write) per tensor instead of their sum, for one extra output tensor of memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

_DONE = object()


class BackgroundWriter:
    """Forward `add(name, tensor)` calls to `writer.add` on one worker thread, in order.

    Args:
        writer: any object with `add(name, tensor)`, e.g. `PlannedShardWriter`.
        depth (`int`, *optional*, defaults to `1`): tensors that may wait while one is being written.
        on_written (*optional*): called with each tensor once it is written, or dropped after a
            failure or an abort (e.g. `BufferPool.give`).

    An exception raised by `writer.add` is re-raised by the next `add` or by `close`. Always end with
    `close()` (which waits for every write) or `abort()` (which drops the queued ones).
    """

    def __init__(self, writer: Any, depth: int = 1, on_written: Callable[[torch.Tensor], None] | None = None) -> None:
        self.writer = writer
        self.on_written = on_written
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
            try:
                if self._error is None and not self._stop.is_set():  # else drain without writing
                    self.writer.add(*item)
            except BaseException as err:  # handed to the caller's thread
                self._error = err
            finally:
                if self.on_written is not None:  # written or dropped: its memory may be reused
                    self.on_written(item[1])

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


class BufferPool:
    """Flat float32 output buffers, reused: a fresh multi-MB tensor per output would be page-faulted
    in again each time (about a tenth of a fusion's time for a 0.5 GB model).

    `take(numel)` hands out a view of a free buffer (making one, up to `count`, or waiting for one to
    be given back); `give(view)` returns it, e.g. from `BackgroundWriter(on_written=pool.give)`. With
    `depth` 1 the writer holds at most two outputs while the next is computed: `count` 3.

    Args:
        size (`int`): entries per buffer (the largest output). count (`int`): buffers at most.
    """

    def __init__(self, size: int, count: int = 3) -> None:
        self.size, self.count = size, count
        self._free: list[torch.Tensor] = []
        self._made = 0
        self._lent: dict[int, torch.Tensor] = {}  # data pointer -> buffer
        self._cond = threading.Condition()

    def take(self, numel: int) -> torch.Tensor:
        if numel > self.size:
            raise ValueError(f"an output of {numel} entries does not fit the pool's buffers of {self.size}")
        with self._cond:
            while not self._free and self._made >= self.count:
                self._cond.wait()
            if self._free:
                buf = self._free.pop()
            else:
                buf = torch.empty(self.size, dtype=torch.float32)
                self._made += 1
            self._lent[buf.data_ptr()] = buf
        return buf[:numel]

    def give(self, tensor: torch.Tensor) -> None:
        """Hand back the buffer behind a view from `take` (other tensors are ignored)."""
        with self._cond:
            buf = self._lent.pop(tensor.data_ptr(), None)
            if buf is not None:
                self._free.append(buf)
                self._cond.notify()
