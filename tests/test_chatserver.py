"""The chat server (pollchat.chatserver) over real loopback sockets: guest
nicks, broadcast and its order, nick changes, commands, long lines, text
cleaning, /quit, shutdown; in-process on every backend.  Its failure modes
are in test_chatserver_failures.py, the ``pollchat chat`` command in
test_chatserver_command.py."""

import threading
import time

import pytest
from helpers import WAIT, ChatClient

from pollchat.chatserver import ChatServer, valid_nick

pytestmark = pytest.mark.timeout(60)


def test_guest_nicks_and_join_notices(start_chat_server, chat_client):
    server = start_chat_server()
    a = chat_client(server)
    assert a.nick == "guest1"
    assert "nobody else here yet" in a.welcome
    b = chat_client(server)
    assert b.nick == "guest2"
    assert "1 here: guest1" in b.welcome
    assert a.line() == "* guest2 joined"
    assert server.loop.backend.name == server.loop.statistics()["backend"]


def test_broadcast_goes_to_everyone_else_not_back(start_chat_server, chat_client):
    server = start_chat_server()
    a, b, c = chat_client(server), chat_client(server), chat_client(server)
    a.sync()
    b.sync()
    a.send("hello, world")
    assert b.line() == "<guest1> hello, world"
    assert c.line() == "<guest1> hello, world"
    assert a.sync() == []  # no echo of its own line


def test_broadcast_order_is_one_total_order(start_chat_server, chat_client):
    server = start_chat_server()
    senders = [chat_client(server) for _ in range(3)]
    readers = [chat_client(server) for _ in range(2)]
    for client in senders + readers:
        client.sync()  # the join notices are read
    count = 60

    def talk(client):
        for i in range(count):
            client.send(f"{client.nick} says {i}")

    threads = [threading.Thread(target=talk, args=(c,)) for c in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    received = [[r.line() for _ in range(count * len(senders))] for r in readers]
    assert received[0] == received[1]  # everyone sees the same order
    for sender in senders:
        mine = [line for line in received[0] if line.startswith(f"<{sender.nick}> ")]
        assert mine == [f"<{sender.nick}> {sender.nick} says {i}" for i in range(count)]
    # Each sender saw the others' lines, in that same order too.
    for sender in senders:
        others = [line for line in received[0] if not line.startswith(f"<{sender.nick}> ")]
        assert [sender.line() for _ in others] == others


def test_nick_changes(start_chat_server, chat_client):
    server = start_chat_server()
    a, b = chat_client(server), chat_client(server)
    a.sync()
    a.send("/nick alice")
    assert a.line() == "* guest1 is now alice"
    assert b.line() == "* guest1 is now alice"
    a.send("hi")
    assert b.line() == "<alice> hi"
    b.send("/nick ALICE")  # taken, whatever the case
    assert b.line() == "* nickname ALICE is taken"
    b.send("/nick 9lives")
    assert b.line().startswith("* invalid nickname '9lives'")
    b.send("/nick " + "x" * 21)
    assert b.line().startswith("* invalid nickname")
    b.send("/nick")
    assert b.line() == "* you are guest2; /nick NAME to change it"
    b.send("/nick bob")
    assert b.line() == "* guest2 is now bob"
    assert a.line() == "* guest2 is now bob"
    a.send("/nick alice")
    assert a.line() == "* you are already alice"
    a.send("/NICK Alice_2")  # commands are case-insensitive, nicks keep their case
    assert a.line() == "* alice is now Alice_2"
    assert b.line() == "* alice is now Alice_2"
    b.send("/who")
    assert b.line() == "* 2 online: Alice_2, bob"
    # A freed nick can be taken again; a new guest skips taken guest names.
    b.send("/nick guest3")
    assert b.line() == "* bob is now guest3"
    c = chat_client(server)
    assert c.nick == "guest4"
    assert a.expect("* guest4 joined") == ["* bob is now guest3"]
    assert sorted(server.nicks()) == sorted(["Alice_2", "guest3", "guest4"])


def test_valid_nick():
    assert valid_nick("a")
    assert valid_nick("Zed_-9")
    assert valid_nick("x" * 20)
    for bad in ("", "x" * 21, "_a", "1a", "a b", "é", "a!"):
        assert not valid_nick(bad), bad


def test_commands_help_unknown_and_empty_lines(start_chat_server, chat_client):
    server = start_chat_server()
    a = chat_client(server)
    a.send("")
    a.send("   ")
    a.send("/help")
    assert a.line() == "* commands:"
    help_lines = [a.line() for _ in range(5)]
    assert any("/quit" in line for line in help_lines)
    a.send("/frobnicate now")
    assert a.line() == "* unknown command /frobnicate; type /help for the list"


def test_long_lines_are_dropped_and_the_session_survives(start_chat_server, chat_client):
    server = start_chat_server(max_line=64)
    a, b = chat_client(server), chat_client(server)
    a.sync()
    a.send("x" * 65)
    assert a.line() == "* line too long (over 64 bytes): not sent"
    a.send_raw(b"y" * 64 + b"\r\n")  # exactly the limit, CRLF ending: fine
    assert b.line() == "<guest1> " + "y" * 64
    # A megabyte without a newline: dropped, never buffered whole.
    session = next(s for s in server.sessions.values() if s.nick == "guest1")
    for _ in range(16):
        a.send_raw(b"z" * 65536)
    a.send_raw(b"\nafter\n")
    assert a.line() == "* line too long (over 64 bytes): not sent"
    assert b.line() == "<guest1> after"
    assert session._size == 0 and session._chunks == []
    assert b.sync() == []  # nothing of the long line reached b


def test_line_limit_bounds_buffering_while_the_line_arrives(start_chat_server, chat_client):
    server = start_chat_server(max_line=100)
    a = chat_client(server)
    a.sync()
    session = next(iter(server.sessions.values()))
    a.send_raw(b"q" * 300_000)  # no newline yet
    deadline = time.monotonic() + WAIT
    while not session._overflow and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session._overflow
    assert sum(len(chunk) for chunk in session._chunks) <= 101
    a.send_raw(b"\n")
    assert a.line() == "* line too long (over 100 bytes): not sent"


def test_text_is_cleaned(start_chat_server, chat_client):
    server = start_chat_server()
    a, b = chat_client(server), chat_client(server)
    a.sync()
    a.send_raw("h\u00e9llo \x1b[31mred\x07\tend\r\n".encode())
    assert b.line() == "<guest1> h\u00e9llo [31mred end"
    a.send_raw(b"bad \xfe\xc3 bytes\n")
    assert b.line() == "<guest1> bad \ufffd\ufffd bytes"
    a.send_raw(b"\xff\xfd\x01\xff\xf4tel\xff\xffnet\r\n")  # IAC DO ECHO, IAC IP, IAC IAC
    assert b.line() == "<guest1> telnet"


def test_quit_with_message(start_chat_server, chat_client):
    server = start_chat_server()
    a, b = chat_client(server), chat_client(server)
    a.sync()
    a.send("/quit gotta go")
    a.send("this line comes after /quit: ignored")
    assert a.eof() == ["* bye"]
    assert b.line() == "* guest1 left (quit: gotta go)"
    assert b.sync() == []
    assert server.nicks() == ["guest2"]


def test_shutdown_tells_clients_and_closes(start_chat_server, chat_client):
    server = start_chat_server()
    a, b = chat_client(server), chat_client(server)
    a.sync()
    b.send("/nick bob")
    a.expect("* guest2 is now bob")
    server.request_shutdown()
    assert a.eof()[-1] == "* server shutting down"
    assert b.eof()[-1] == "* server shutting down"
    with pytest.raises(OSError):
        ChatClient(server.address[1])  # no longer listening


def test_port_in_use(backend_name):
    first = ChatServer("127.0.0.1", 0, backend=backend_name)
    try:
        with pytest.raises(OSError) as info:
            ChatServer("127.0.0.1", first.address[1], backend=backend_name)
        assert info.value.errno == __import__("errno").EADDRINUSE
    finally:
        first.close()
        first.loop.close()


def test_runs_on_a_loop_the_caller_owns():
    import pollchat

    loop = pollchat.Loop("poll")
    server = ChatServer("127.0.0.1", 0, loop=loop)
    assert server.loop is loop and server._fileno in loop.map
    done = threading.Event()

    def client():
        try:
            a = ChatClient(server.address[1])
            a.send("/quit")
            assert a.eof() == ["* bye"]
        finally:
            done.set()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not done.is_set() and time.monotonic() < deadline:
        loop.run_once(0.05)
    thread.join(WAIT)
    server.shutdown()
    server.serve_forever(grace=1.0)
    assert not loop.closed  # not the server's to close
    assert not loop.map
    loop.close()


def test_request_shutdown_after_the_server_stopped_is_a_no_op(backend_name):
    server = ChatServer("127.0.0.1", 0, backend=backend_name)
    server.request_shutdown()
    server.serve_forever(grace=0.5)  # runs the shutdown, closes its loop
    assert server.loop.closed
    server.request_shutdown()  # from a late caller (a test's teardown): nothing happens
