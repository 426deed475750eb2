"""SIGTERM ends a command as Ctrl-C does: the running code unwinds (staging folders and partial files are removed),
and the process exits 130 after SIGINT, 143 after SIGTERM. A second signal during that clean-up exits at once; what
it leaves behind is removed by the next run (docs/cli.md#interrupting-a-command)."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interruptions:
    """The signal handler of the ``glm-engine`` process: remembers the first signal, raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.first: int | None = None

    def install(self) -> None:
        for signum in HANDLED:
            signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        """Back to the default actions once the command has ended: a signal during interpreter shutdown ends the
        process quietly instead of raising KeyboardInterrupt where nothing catches it."""
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_DFL)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.first is not None:
            os._exit(128 + signum)  # a second signal: no more clean-up
            return
        self.first = signum
        print(f"\n{signal.Signals(signum).name}: stopping (again to exit at once)", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def exit_code(self, code: int | str | None) -> int | str | None:
        """The process's exit code: 128 + the signal's number once a signal stopped it (typer says 130 for both)."""
        return code if self.first is None else 128 + self.first
