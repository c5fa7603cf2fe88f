"""pollchat.smtpd against CPython 3.11's smtpd itself: the same dialogues
played on both (tests/smtpd_dialogue.py, in a subprocess each) must give
the same replies, the same channel state after every chunk and the same
messages; where pollchat deliberately differs (3.11 dropped or hung the
session), 3.11's failure is checked to be what docs/design.md says."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_install import find_python

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYER = os.path.join(HERE, "smtpd_dialogue.py")
PYTHON311 = sys.executable if sys.version_info[:2] == (3, 11) else find_python("3.11")

LONG = "a" * 520
SAME = {
    "helo session": ({}, ["HELO client\r\n", "MAIL FROM:<a@example.com>\r\n",
                          "RCPT TO:<b@example.com>\r\n", "RCPT TO:c@example.com\r\n",
                          "DATA\r\n", "Subject: x\r\n\r\n..dot\r\n.\r\n", "QUIT\r\n"]),
    "ehlo, options, two messages": ({}, [
        "EHLO client\r\n", "MAIL FROM:<a@example.com> SIZE=20 BODY=8BITMIME\r\n",
        "RCPT TO:<b@example.com>\r\n", "DATA\r\n", "h\xc3\xa9\r\n.\r\n",
        "MAIL FROM:<> body=7bit\r\n", "RCPT TO:<postmaster>\r\n", "DATA\r\n",
        "status please\r\n.\r\n"]),
    "errors before a transaction": ({}, [
        "MAIL FROM:<a@example.com>\r\n", "RCPT TO:<a@example.com>\r\n", "DATA\r\n",
        "EHLO\r\n", "HELO\r\n", "NOOP x\r\n", "RSET x\r\n", "VRFY\r\n", "VRFY a@b\r\n",
        "EXPN x\r\n", "BOGUS x\r\n", "\r\n", "HELO x\r\n", "EHLO y\r\n",
        "RCPT TO:<a@b>\r\n", "DATA\r\n", "MAIL FROM a@b\r\n", "MAIL FROM:\r\n",
        "MAIL FROM:<a@b> SIZE=1\r\n", "MAIL FROM:<a@b>\r\n", "MAIL FROM:<c@d>\r\n",
        "RCPT TO b\r\n", "DATA\r\n", "RCPT TO:<b@c> X=1\r\n", "RCPT TO:<b@c>\r\n",
        "DATA x\r\n", "RSET\r\n", "QUIT now\r\n"]),
    "help": ({}, ["HELP\r\n", "HELP mail\r\n", "HELP spam\r\n", "EHLO x\r\n",
                  "HELP RCPT\r\n", "HELP VRFY\r\n", "HELP DATA\r\n"]),
    "esmtp parameters": ({}, [
        "EHLO x\r\n", "MAIL FROM:<a@b> SIZE=x\r\n", "MAIL FROM:<a@b> BODY=9BIT\r\n",
        "MAIL FROM:<a@b> SMTPUTF8\r\n", "MAIL FROM:<a@b> X=\r\n", "MAIL FROM:<a@b> -=1\r\n",
        "MAIL FROM:<a@b> SIZE=99999999999\r\n", 'MAIL FROM:<"Fred Blogs"@example.com>\r\n',
        "RCPT TO:<b@c> NOTIFY=NEVER\r\n"]),
    "line limits": ({"enable_SMTPUTF8": True}, [
        f"HELO x\r\nMAIL FROM:<{LONG}@example.com>\r\n", "RSET\r\n",
        f"MAIL FROM:<{LONG}@example.com>\r\n", "NOOP " + "x" * 520 + "\r\n",
        "MAIL FROM:<" + "b" * 5000 + "@x>\r\n"]),
    "ehlo line limits": ({"enable_SMTPUTF8": True}, [
        "EHLO x\r\n", f"MAIL FROM:<{LONG}@example.com> SMTPUTF8\r\n",
        "NOOP " + "x" * 520 + "\r\n", "RSET\r\n", f"MAIL FROM:<{LONG}{LONG}@x>\r\n"]),
    "smtputf8": ({"enable_SMTPUTF8": True}, [
        "EHLO x\r\n", "MAIL FROM:<na\xc3\xafve@example.com> SMTPUTF8 BODY=8BITMIME\r\n",
        "RCPT TO:<j\xc3\xb6rg@example.com>\r\n", "DATA\r\n", "h\xc3\xa9\r\n.\r\n",
        "MAIL FROM:<a@b> SMTPUTF8=yes\r\n"]),
    "decode_data": ({"decode_data": True}, [
        "EHLO x\r\n", "MAIL FROM:<a@b>\r\n", "MAIL FROM:<a@b> BODY=8BITMIME\r\n",
        "RSET\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n",
        "h\xc3\xa9\r\n..x\r\n.\r\n"]),
    "split reads and pipelining": ({}, [
        "HE", "LO x\r\nMAIL FROM:<a@b>\r", "\nRCPT TO:<c@d>\r\nDATA\r\nbody\r\n.",
        "\r\n", "MAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n\r\n.\r\nNOOP\r\n",
        "HELO bare-lf\n", "\r\n"]),
    "data size limit": ({"data_size_limit": 100}, [
        "EHLO x\r\n", "MAIL FROM:<a@b> SIZE=101\r\n", "MAIL FROM:<a@b> SIZE=100\r\n",
        "RCPT TO:<c@d>\r\n", "DATA\r\n", "x" * 90 + "\r\n.\r\n"]),
    "no size limit": ({"data_size_limit": None}, [
        "EHLO x\r\n", "MAIL FROM:<a@b> SIZE=999999999999\r\n"]),
    "empty message body waits for more (as in 3.11)": ({}, [
        "HELO x\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n", ".\r\n"]),
}

# Dialogues where pollchat answers and 3.11 did not: {name: (server, chunks,
# what 3.11 did (the exception that escaped, or "no reply" at the last
# chunk), pollchat's reply to the last chunk)}.
FIXED = {
    "552 leaves DATA": ({"data_size_limit": 10}, [
        "HELO x\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n",
        "x" * 50 + "\r\n.\r\n", "RSET\r\n"], "no reply", "250 OK\r\n"),
    "bare <": ({}, ["EHLO x\r\n", "MAIL FROM:<\r\n"], "IndexError",
               "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"),
    "addr_spec fails": ({}, ["EHLO x\r\n", 'MAIL FROM:<"\r\n'], "IndexError",
                        "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"),
    "bare SIZE": ({}, ["EHLO x\r\n", "MAIL FROM:<a@b> SIZE\r\n"], "AttributeError",
                  "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"),
    "unicode digit SIZE": ({}, ["EHLO x\r\n", "MAIL FROM:<a@b> SIZE=\xc2\xb2\r\n"],
                           "ValueError",
                           "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"),
    "VRFY garbage": ({}, ["VRFY @\r\n"], "HeaderParseError", "502 Could not VRFY @\r\n"),
    "non-ASCII verb": ({}, ["CAF\xc3\x89\r\n"], "UnicodeEncodeError",
                       '500 Error: command "CAF\\xc9" not recognized\r\n'),
    "invalid UTF-8": ({}, ["\xff\r\n"], "UnicodeDecodeError", "500 Error: bad syntax\r\n"),
    "character split between reads": ({"decode_data": True}, [
        "HELO x\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n", "h\xc3",
        "\xa9\r\n.\r\n"], "UnicodeDecodeError", "250 OK\r\n"),
}


def play(python, impl, dialogues):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([python, PLAYER, impl], input=json.dumps(dialogues), env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def as_dialogue(server, chunks):
    return {"server": server, "chunks": chunks}


@pytest.fixture(scope="module")
def reference():
    """(3.11's steps, pollchat's steps) for every dialogue, SAME then FIXED."""
    if PYTHON311 is None:
        pytest.skip("no Python 3.11 here (the reference smtpd): looked under pyenv and PATH")
    dialogues = [as_dialogue(*SAME[name]) for name in SAME]
    dialogues += [as_dialogue(*FIXED[name][:2]) for name in FIXED]
    return play(PYTHON311, "stdlib", dialogues), play(sys.executable, "pollchat", dialogues)


@pytest.mark.parametrize("index, name", list(enumerate(SAME)))
def test_same_as_cpython_311(reference, index, name):
    theirs, ours = reference[0][index], reference[1][index]
    assert all("raised" not in step for step in theirs)
    assert len(ours) == len(theirs) == len(SAME[name][1]) + 1
    for number, (their_step, our_step) in enumerate(zip(theirs, ours)):
        assert our_step == their_step, f"after chunk {number}"


@pytest.mark.parametrize("index, name", list(enumerate(FIXED)))
def test_where_cpython_311_failed(reference, index, name):
    server, chunks, failure, reply = FIXED[name]
    theirs, ours = reference[0][len(SAME) + index], reference[1][len(SAME) + index]
    if failure == "no reply":
        assert theirs[-1]["replies"] == "" and "raised" not in theirs[-1]
        # The same reply, but 3.11 stayed in DATA (smtp_state 1) at the step before.
        assert ours[-2]["replies"] == theirs[-2]["replies"]
        assert (ours[-2]["state"]["smtp_state"], theirs[-2]["state"]["smtp_state"]) == (0, 1)
        agreed = len(theirs) - 2
    else:
        assert theirs[-1].get("raised") == failure
        agreed = len(theirs) - 1  # the steps before 3.11 raised
    assert len(ours) == len(chunks) + 1
    assert all("raised" not in step for step in ours)
    assert ours[-1]["replies"] == reply
    assert ours[:agreed] == theirs[:agreed]
