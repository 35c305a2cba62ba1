"""How a worker stops: the first SIGTERM/SIGINT sets a flag that the running trial reads at its next
epoch (`GracefulStop`, then failed and re-queued); a second signal exits at once, except while a
stopped trial is being re-queued (a few database writes), so that it is never lost."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable


class GracefulStop(Exception):
    """Raised at the next epoch after SIGTERM/SIGINT: the trial is failed and re-queued."""


@dataclass
class StopFlag:
    """Set by the first signal; the second one exits the process at once, except while a stopped
    trial is being failed and re-queued (a few database writes), so that it is never lost."""

    signal: str | None = None
    log: Callable[[str], None] = print
    _event: threading.Event = field(default_factory=threading.Event)
    _deferred: bool = False
    _exit_code: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            if self._deferred:
                self._exit_code = 128 + signum
                self.log(f"second signal ({name}): exiting as soon as the stopped trial is re-queued")
                return
            self.log(f"second signal ({name}): exiting now")
            os._exit(128 + signum)
        self.signal = name
        self._event.set()
        self.log(f"{name}: stopping at the next epoch; the trial will be re-queued (signal again to exit now)")

    def defer_exit(self) -> None:
        self._deferred = True

    def release(self) -> None:
        self._deferred = False
        if self._exit_code is not None:
            os._exit(self._exit_code)

    def sleep(self, seconds: float) -> None:
        self._event.wait(seconds)
