"""A TCP proxy on loopback between voiced and a server, to break the network the ways a real one
breaks: ``cut()`` stops every byte both ways with the sockets left open (a pulled cable, a dead
NAT entry: only a ping notices), ``drop()`` closes every connection at once (a killed server),
``refuse`` turns new connections away; ``heal()`` lets bytes flow again."""

from __future__ import annotations

from functools import partial

import trio


class NetProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_port``; start it with ``nursery.start(proxy.serve)``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refuse = False
        self.accepted = 0
        self._flowing = trio.Event()
        self._flowing.set()
        self._links: set[trio.CancelScope] = set()

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def cut(self) -> None:
        self._flowing = trio.Event()

    def heal(self) -> None:
        self._flowing.set()

    def drop(self) -> None:
        for scope in self._links:
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.refuse:
            await client.aclose()
            return
        self.accepted += 1
        async with client:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with server:
                with trio.CancelScope() as scope:
                    self._links.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(partial(self._pump, client, server, nursery))
                            nursery.start_soon(partial(self._pump, server, client, nursery))
                    finally:
                        self._links.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, nursery: trio.Nursery
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await self._flowing.wait()  # cut: the bytes wait, unseen, as on a dead link
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()  # one side closed: close the other
