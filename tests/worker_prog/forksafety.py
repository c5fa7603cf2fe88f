"""serve() after the master made a loop and registered a channel in it.

``python forksafety.py OUT_DIR`` (POLLCHAT_BACKEND=epoll, Linux): writes
``master.json`` (its epoll fd, waker identity, registered fd), then each
worker writes ``worker-<pid>.json`` describing the loop it got.
"""

import json
import os
import socket
import sys

import pollchat
from pollchat import asyncore, workers

OUT = sys.argv[1]


def registered(epoll_fd):
    """The fds registered in an epoll instance, from the kernel's view."""
    with open("/proc/self/fdinfo/%d" % epoll_fd) as f:
        return sorted(int(line.split()[1]) for line in f if line.startswith("tfd:"))


def identity(fd):
    """What tells two wakers apart: an eventfd's id, a pipe's inode."""
    with open("/proc/self/fdinfo/%d" % fd) as f:
        for line in f:
            if line.startswith("eventfd-id:"):
                return "eventfd %s" % line.split()[1]
    if os.readlink("/proc/self/fd/%d" % fd).startswith("anon_inode:"):
        return None  # an eventfd on a kernel that does not show its id
    return "inode %d" % os.fstat(fd).st_ino


def write(name, data):
    with open(os.path.join(OUT, name + ".tmp"), "w") as f:
        json.dump(data, f)
    os.rename(os.path.join(OUT, name + ".tmp"), os.path.join(OUT, name))


inherited_loop = pollchat.get_loop()  # the default map's loop, made in the master
a, b = socket.socketpair()
inherited = asyncore.dispatcher(a)
inherited.handle_read = lambda: None
inherited_loop.run_once(0)  # now registered in the master's epoll set
write("master.json", {"pid": os.getpid(), "epoll_fd": inherited_loop.backend.fileno(),
                      "waker": identity(inherited_loop._waker.fileno()),
                      "registered": registered(inherited_loop.backend.fileno()),
                      "expected": sorted([inherited_loop._waker.fileno(), a.fileno()])})


class Listener(asyncore.dispatcher):
    def __init__(self):
        asyncore.dispatcher.__init__(self)
        self.create_socket()
        self.bind(("127.0.0.1", 0))
        self.listen(5)


def setup():
    loop = pollchat.get_loop()
    listener = Listener()
    loop.run_once(0)
    write("worker-%d.json" % os.getpid(), {
        "same_loop": loop is inherited_loop,
        "inherited_loop_closed": inherited_loop.closed,
        "inherited_channel_in_map": any(ch is inherited for ch in loop.map.values()),
        "registered": registered(loop.backend.fileno()),
        "expected": sorted([loop._waker.fileno(), listener.socket.fileno()]),
        "waker": identity(loop._waker.fileno()),
    })


sys.exit(workers.serve(setup, workers=2, graceful_timeout=5))
