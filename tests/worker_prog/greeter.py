"""A legacy asyncore/asynchat server for the workers tests, run unmodified
with ``python -m pollchat run --workers N greeter.py PORT``.

Every connection is greeted with ``<worker pid> <peer address>`` (the peer as
``accept()`` reported it).  Then each line is echoed, except ``BIG n``, which
pushes ``n`` bytes of ``x`` then ``\\nEND\\n`` in one ``push()``.  Each worker
prints ``PORT <port> <pid>`` once it listens.  Extra arguments: ``crash``
(raise at start), ``crash-if=PATH`` (raise at start if PATH exists),
``other-thread`` (SIGTERM reaches a thread of its own).
"""

import asynchat
import asyncore
import os
import signal
import sys
import threading
import time


class Session(asynchat.async_chat):
    def __init__(self, sock, addr):
        asynchat.async_chat.__init__(self, sock)
        self.set_terminator(b"\n")
        self.pieces = []
        host, port = addr[:2]
        self.push(("%d %s:%d\n" % (os.getpid(), host, port)).encode())

    def collect_incoming_data(self, data):
        self.pieces.append(data)

    def found_terminator(self):
        line = b"".join(self.pieces)
        self.pieces = []
        if line.startswith(b"BIG "):
            self.push(b"x" * int(line[4:]) + b"\nEND\n")
        else:
            self.push(line + b"\n")


class Server(asyncore.dispatcher):
    def __init__(self, port):
        asyncore.dispatcher.__init__(self)
        self.create_socket()
        self.set_reuse_addr()
        self.bind(("127.0.0.1", port))
        self.listen(128)
        print("PORT %d %d" % (self.socket.getsockname()[1], os.getpid()), flush=True)

    def handle_accept(self):
        # The legacy idiom that breaks when accept() returns None.
        conn, addr = self.accept()
        Session(conn, addr)


if "crash" in sys.argv[2:]:
    raise RuntimeError("this program crashes at start")
for arg in sys.argv[2:]:
    if arg.startswith("crash-if=") and os.path.exists(arg[len("crash-if="):]):
        raise RuntimeError("this new version crashes at start")
if "other-thread" in sys.argv[2:]:
    # Only a thread of the program's own can take SIGTERM: the main thread
    # blocks it (the thread, started first, does not).
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
Server(int(sys.argv[1]))
asyncore.loop()  # each pass waits up to 30 s
