"""How a ``kdiqa`` command ends: its exit code, and its failures reported in one line.

Expected user errors (KdiqaError) print one line, ``kdiqa: error: ...``, and exit 2; so does an
OSError that says the machine cannot take a file (a full disk, a read-only folder, a missing path),
wherever it comes from. ``--debug`` shows the traceback instead. Third-party chatter is silenced
unless ``--verbose`` (:mod:`kdiqa.console`).

A module of its own, importing neither Lightning nor any command, so that every command module
(:mod:`kdiqa.cli.commands`, :mod:`kdiqa.cli.predict`) reports alike and imports only what it needs.
"""
from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable

from kdiqa.console import setup_console
from kdiqa.errors import KdiqaError
from kdiqa.io import os_reason

EXIT_USER_ERROR = 2
# OSErrors that describe the machine, not a bug: reported in one line like user errors
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                      errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.EIO}


def run_reported(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command(args)``; user errors become one line and exit 2, Ctrl-C exits 130."""
    setup_console(verbose=args.verbose)
    try:
        return int(command(args) or 0)
    except KdiqaError as exc:
        if args.debug:
            raise
        print(f"kdiqa: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if args.debug or exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kdiqa: error: {where}{os_reason(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kdiqa: interrupted", file=sys.stderr)
        return 130
