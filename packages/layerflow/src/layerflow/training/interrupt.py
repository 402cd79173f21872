"""Ctrl-C stops a training run between steps, not inside one.

An interrupt that lands inside a library call (a safetensors read in the data loader, a checkpoint
write) can surface as that library's own error instead of ``KeyboardInterrupt``, so the run would
end in a traceback rather than in the message saying how to resume. Inside :func:`deferred_interrupt`
the first SIGINT only asks the loop to stop after the current step; a second one interrupts at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Yield ``stop_requested()``; SIGINT sets it (logged) instead of raising, a second SIGINT raises.

    Only where SIGINT would raise ``KeyboardInterrupt`` (Python's default handler, main thread):
    an ignored SIGINT or a handler the caller installed stays as it is.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: False
        return
    requested = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        logger.warning("interrupted: stopping after this step (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def ignore_interrupts(worker_id: int) -> None:
    """``worker_init_fn`` of data-loader workers: a terminal's Ctrl-C reaches every process of the
    job, and a worker it killed would fail the step the run is finishing before it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
