"""A legacy asyncore/asynchat program, as written for Python <= 3.11.

It knows nothing of pollchat: the tests run it with ``pollchat run``.  An
echo server: prints ``PORT <n>``, answers each line with ``echo: <line>``,
and after ``--lines`` lines in all stops and exits with ``--exit-code``.

Options: --lines N (default 3), --exit-code C (default 0), --crash (raise
an uncaught exception instead of serving), --interrupt (raise an uncaught
KeyboardInterrupt, as Ctrl-C would), --info-only (print PORT and INFO,
then exit with --exit-code without serving; the arguments after it are only
shown in INFO's argv).
"""

import asynchat
import asyncore
import json
import os
import socket
import sys
from asyncore import dispatcher


class EchoHandler(asynchat.async_chat):
    def __init__(self, sock, server):
        asynchat.async_chat.__init__(self, sock)
        self.server = server
        self.set_terminator(b"\n")
        self.buffer = []

    def collect_incoming_data(self, data):
        self.buffer.append(data)

    def found_terminator(self):
        line = b"".join(self.buffer).rstrip(b"\r")
        self.buffer = []
        self.push(b"echo: " + line + b"\n")
        self.server.served += 1
        if self.server.served >= self.server.limit:
            self.close_when_done()
            self.server.close()


class EchoServer(dispatcher):
    def __init__(self, limit):
        dispatcher.__init__(self)
        self.limit = limit
        self.served = 0
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0))
        self.listen(5)

    def handle_accepted(self, sock, addr):
        EchoHandler(sock, self)


def describe():
    """What the program sees of its environment, for the tests."""
    pollchat = sys.modules.get("pollchat")
    loop = pollchat.get_loop() if pollchat is not None else None
    return {
        "argv": sys.argv,
        "name": __name__,
        "path0": sys.path[0],
        "asyncore": asyncore.__name__,
        "asynchat": asynchat.__name__,
        "main_is_me": getattr(sys.modules["__main__"], "EchoServer", None) is EchoServer,
        "backend": loop.backend.name if loop is not None else None,
        "env_backend": os.environ.get("POLLCHAT_BACKEND"),
        "file": __file__,
        "nofile": nofile_soft_limit(),
    }


def nofile_soft_limit():
    try:
        import resource
    except ImportError:
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv):
    limit, exit_code, crash, info_only = 3, 0, False, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--info-only":
            info_only = True
            break
        if arg == "--lines":
            limit = int(args.pop(0))
        elif arg == "--exit-code":
            exit_code = int(args.pop(0))
        elif arg == "--crash":
            crash = True
        elif arg == "--interrupt":
            crash = "interrupt"
        else:
            sys.exit(f"echo_legacy: unknown argument {arg!r}")
    server = EchoServer(limit)
    print("PORT", server.socket.getsockname()[1], flush=True)
    print("INFO", json.dumps(describe()), flush=True)
    if crash == "interrupt":
        raise KeyboardInterrupt
    if crash:
        explode()
    if info_only:
        server.close()
        return exit_code
    asyncore.loop(timeout=0.5)
    print("SERVED", server.served, flush=True)
    return exit_code


def explode():
    raise RuntimeError("legacy program crashed on purpose")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
