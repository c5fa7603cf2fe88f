"""Small TLS programs on pollchat for the TLS tests: an echo server, a line
client, and a listener that hands each connection to a session class."""

import socket

from pollchat import asynchat, asyncore


class Listener(asyncore.dispatcher):
    """Accepts on 127.0.0.1 (any free port) and makes ``session(self, sock)``
    for each connection; keeps them in ``sessions``."""

    def __init__(self, loop, session, rcvbuf=None, sndbuf=None):
        super().__init__(map=loop.map)
        self.loop = loop
        self.session = session
        self.sessions = []
        self.create_socket()
        if rcvbuf:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.bind(("127.0.0.1", 0))
        self.listen(512)
        self.address = self.socket.getsockname()

    def handle_accepted(self, sock, addr):
        self.sessions.append(self.session(self, sock))

    def handle_error(self):
        raise  # noqa: PLE0704 - a test listener must never hide an error


class Recorder:
    """Mixed into test channels: records hook calls in ``events`` and fails
    loudly on handle_error (a test channel must not hide one)."""

    def _init_recorder(self):
        self.events = []
        self.errors = []

    def handle_handshake(self):
        obj = self.get_ssl_object()
        self.events.append(("handshake", obj.version(), obj.selected_alpn_protocol()))

    def handle_handshake_failed(self, exc):
        self.events.append(("handshake_failed", exc))
        super().handle_handshake_failed(exc)

    def handle_unwrapped(self):
        self.events.append(("unwrapped",))

    def handle_error(self):
        import sys

        self.errors.append(sys.exc_info()[1])
        self.close()

    def handle_close(self):
        self.events.append(("close",))
        self.close()


class Lines:
    """Mixed into test chat channels: collects ``\\n``-terminated lines in
    ``lines`` and calls ``on_line(line)`` for each."""

    def _init_lines(self):
        self.lines = []
        self._buf = []
        self.set_terminator(b"\n")

    def collect_incoming_data(self, data):
        self._buf.append(data)

    def found_terminator(self):
        line = b"".join(self._buf)
        self._buf = []
        self.lines.append(line)
        self.on_line(line)


class LineSession(Recorder, Lines, asynchat.async_chat):
    """A server session: TLS from the start (``context``), lines in
    ``lines``; ``reply(line)`` says what to answer (default: echo)."""

    context = None

    def __init__(self, server, sock):
        asynchat.async_chat.__init__(self, sock, map=server.loop.map)
        self._init_recorder()
        self._init_lines()
        self.server = server
        if self.context is not None:
            self.start_tls(self.context, server_side=True)

    def on_line(self, line):
        self.reply(line)

    def reply(self, line):
        self.push(line + b"\n")


class LineClient(Recorder, Lines, asynchat.async_chat):
    """A client: connects to ``address``; TLS from the start if ``context``;
    lines received in ``lines``; ``on_line(line)`` is called for each."""

    def __init__(self, loop, address, context=None, hostname="localhost", rcvbuf=None,
                 **tls_kwargs):
        asynchat.async_chat.__init__(self, map=loop.map)
        self._init_recorder()
        self._init_lines()
        self.loop = loop
        self.create_socket()
        if rcvbuf:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if context is not None:
            self.start_tls(context, server_hostname=hostname, **tls_kwargs)
        self.connect(address)

    def handle_connect(self):
        pass

    def on_line(self, line):
        pass


class BIOClient:
    """A hand-driven TLS client on a plain non-blocking socket and an
    ``ssl.SSLObject``: the test decides exactly which bytes go out together.
    Call ``pump()`` between loop passes."""

    def __init__(self, context, address=None, sock=None, hostname="localhost"):
        import ssl

        self.ssl = ssl
        self.sock = socket.create_connection(address) if sock is None else sock
        self.sock.setblocking(False)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)
        self.handshake_done = False

    def pump(self):
        """Advance the handshake, send what TLS produced, take what arrived."""
        if not self.handshake_done:
            try:
                self.obj.do_handshake()
                self.handshake_done = True
            except self.ssl.SSLWantReadError:
                pass
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if data:
            self.incoming.write(data)

    def send(self, data, plain_after=b""):
        """Encrypt ``data``; send it with ``plain_after`` in one send."""
        if data:
            self.obj.write(data)
        self.sock.sendall(self.outgoing.read() + plain_after)

    def close(self):
        self.sock.close()
