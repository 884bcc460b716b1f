"""The embedded Realtime simulator: a server speaking the GA Realtime protocol over a WebSocket.

voiced's whole pipeline runs against it with no key and no network: over loopback TCP for the
daemon (``voiced sim``) and integration tests, over trio's in-memory streams for unit tests.
The protocol logic is sans-IO (:mod:`voiced.sim.session` and the modules it uses);
:mod:`voiced.sim.server` adds the WebSocket, pacing and fatal closes, and :mod:`voiced.sim.http`
the client-secret endpoint on the same port. Replies echo the last committed audio (after a
short preamble item when asked), so tests can check audio bit-exact end to end.
"""

from __future__ import annotations

from voiced.sim.mint import SimMint as SimMint
from voiced.sim.server import SimConnection as SimConnection
from voiced.sim.server import SimFaults as SimFaults
from voiced.sim.server import Simulator as Simulator
