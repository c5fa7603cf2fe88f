"""``python -m pollchat``: the ``pollchat`` command (see :mod:`pollchat.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
