"""voiced, run in-process by a thin wrapper that notes when the session is connected.

``python -m bench.clients.voiced_client CONFIG OUT IN...`` is ``voiced ask --config CONFIG
IN... --out OUT`` plus two things: a logging handler on ``voiced.transport`` that records this
process's CPU time and the wall clock at the first "connected to ..." record (voiced logs it at
INFO when ``session.created`` arrives and ``session.update`` is sent), and at the end the echo
check of the reply file against the inputs. The wrapper's own cost is this module's import and
one handler; voiced itself is unchanged.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from bench.clients.common import echo_status, read_pcm


class ConnectedMark(logging.Handler):
    """Records ``process_time()`` and ``time()`` at the first "connected" record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.cpu: float | None = None
        self.wall: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.cpu is None and record.getMessage().startswith("connected"):
            self.cpu, self.wall = time.process_time(), time.time()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: voiced_client CONFIG OUT.wav IN.wav [IN.wav ...]", file=sys.stderr)
        return 2
    config, out, inputs = argv[0], Path(argv[1]), [Path(a) for a in argv[2:]]
    mark = ConnectedMark()
    logging.getLogger("voiced.transport").addHandler(mark)

    from voiced.cli import main as voiced_main

    status = voiced_main(["ask", "--config", config, *map(str, inputs), "--out", str(out)])
    if mark.cpu is not None:
        print(f"CONNECTED_CPU={mark.cpu:.6f}\nCONNECTED_WALL={mark.wall:.6f}", file=sys.stderr)
    if status != 0:
        return status
    sent = b"".join(read_pcm(path) for path in inputs)
    return echo_status([sent], [read_pcm(out)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
