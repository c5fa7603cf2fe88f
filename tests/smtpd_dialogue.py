"""Play SMTP dialogues against an smtpd implementation; print what it did.

Usage: python smtpd_dialogue.py stdlib|pollchat < dialogues.json > results.json

``stdlib`` is the standard library's smtpd (CPython 3.11 and older),
``pollchat`` is pollchat.smtpd: test_smtpd_reference.py runs both and
compares.  Each dialogue is ``{"server": {SMTPServer keyword arguments},
"chunks": [text, ...]}`` (text: latin-1 for bytes).  The channel sits on one
end of a socketpair; each chunk is written to the other end and the channel
reads it with ``handle_read()`` until the socket is drained, then writes
with ``handle_write()`` while it is ``writable()`` (the loop's two passes,
done by hand: the run is deterministic, with no loop and no timing).  After
each chunk the script records the replies, the channel's public state, the
messages delivered so far, or the exception that escaped (as the loop would
hand it to handle_error()).
"""

import json
import select
import socket
import sys
import warnings

STATE = ("smtp_state", "seen_greeting", "extended_smtp", "mailfrom", "rcpttos",
         "require_SMTPUTF8", "num_bytes", "received_data", "received_lines")


def plain(value):
    """JSON-able, bytes kept apart from str."""
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def load(impl):
    if impl == "stdlib":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import asyncore
            import smtpd
        return smtpd, asyncore
    from pollchat import asyncore, smtpd

    return smtpd, asyncore


def play(smtpd, asyncore, dialogue):
    delivered = []

    class Recorder(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            delivered.append([mailfrom, list(rcpttos), data, kwargs])
            if data in (b"status please", "status please"):
                return "250 Custom status"
            return None

    socket_map = {}
    server = Recorder(("127.0.0.1", 0), ("127.0.0.1", 25), map=socket_map, **dialogue["server"])
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    steps = []
    try:
        channel = server.channel_class(server, ours, ("peer", 1), server.data_size_limit,
                                       socket_map, server.enable_SMTPUTF8, server._decode_data)
        steps.append({"replies": drain(theirs)})
        for text in dialogue["chunks"]:
            theirs.sendall(text.encode("latin-1"))
            step = {}
            try:
                while channel.connected and select.select([ours], [], [], 0)[0]:
                    channel.handle_read()
                # The loop's write pass: what was queued rather than sent (the
                # close after QUIT; replies an implementation holds back).
                for _ in range(100):
                    if not (channel.connected and channel.writable()):
                        break
                    channel.handle_write()
            except Exception as exc:  # what the loop would pass to handle_error()
                step["raised"] = type(exc).__name__
            step["replies"] = drain(theirs)
            step["state"] = {name: plain(getattr(channel, name, None)) for name in STATE}
            step["delivered"] = plain(delivered)
            steps.append(step)
            if "raised" in step:
                break
    finally:
        asyncore.close_all(socket_map)
        theirs.close()
    return steps


def drain(sock):
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def main():
    smtpd, asyncore = load(sys.argv[1])
    dialogues = json.load(sys.stdin)
    json.dump([play(smtpd, asyncore, d) for d in dialogues], sys.stdout)


if __name__ == "__main__":
    main()
