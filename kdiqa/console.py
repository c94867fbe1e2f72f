"""What a ``kdiqa`` command prints: its own lines, training progress, and warnings a user can act on.

Third-party libraries print much a kdiqa user cannot act on: Lightning's hardware summary and its
LitLogger advertisement, "N modules in eval mode" (kdiqa freezes parts of its teachers on purpose),
the "not many workers" hint (wrong for small models on few cores, see kdiqa/recipes/dpiqa/tiny.yaml), the
deprecation notices one library raises about another (a pytree API, inside Lightning), and
diffusers' or transformers' advice. :func:`setup_console` silences exactly that chatter and prints
the warnings that remain on one line each; ``--verbose`` leaves every library as it is.

When stdout is not a terminal (a log file, CI), a progress bar redraws one line with carriage
returns and reads as noise or nothing; :func:`use_plain_progress` says so, and training then prints
plain lines (:class:`kdiqa.trainer.PlainProgress`). This module imports no Lightning: ``kdiqa predict``
reports through it and starts without Lightning's seconds of imports.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

# messages of warnings that are chatter for a kdiqa user (regular expressions, matched at the start)
CHATTER = (
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*_register_pytree_node is deprecated",
    r".*pytree.* is deprecated",
    r"Found \d+ module\(s\) in eval mode",
    r"The '\w+_dataloader' does not have many workers",
    r"Checkpoint directory .* exists and is not empty",
    r"Experiment logs directory .* exists and is not empty",
    r"Cannot initialize model with low cpu memory usage",
)
# libraries whose INFO lines are chatter (hardware summary, tips, "Restoring states ...")
QUIET_LOGGERS = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
OWN_PACKAGES = ("kdiqa",)
_SHOWWARNING = warnings.showwarning


def setup_console(verbose: bool = False) -> None:
    """Silence third-party chatter and print warnings on one line each; ``verbose`` undoes both.

    Idempotent either way, so that commands run in one process (tests, notebooks) can switch.
    """
    warnings.filters[:] = [f for f in warnings.filters if not (f[0] == "ignore" and f[1] is not None and f[1].pattern in CHATTER)]
    if verbose:
        warnings.showwarning = _SHOWWARNING
        for name in QUIET_LOGGERS:  # back to what the libraries set (Lightning: INFO)
            logging.getLogger(name).setLevel(logging.INFO if name.startswith("pytorch_lightning") else logging.NOTSET)
        return
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):  # read when those libraries load
        os.environ.setdefault(variable, "error")
    for pattern in CHATTER:
        warnings.filterwarnings("ignore", message=pattern)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.showwarning = _one_line


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              file: Any = None, line: str | None = None) -> None:
    """``kdiqa: warning: ...`` for kdiqa's own warnings, ``warning: ... (from <library>)`` for others."""
    text = " ".join(str(message).split())
    parts = Path(filename).parts
    installed = "site-packages" in parts
    library = parts[parts.index("site-packages") + 1] if installed and parts[-1] != "site-packages" else Path(filename).stem
    own = not installed and any(p in OWN_PACKAGES for p in parts)
    stream = file or sys.stderr
    try:
        stream.write(f"kdiqa: warning: {text}\n" if own else f"warning: {text} (from {library})\n")
    except OSError:
        pass  # a closed or full stream: warnings are not worth failing for


_PLAIN_PROGRESS = False  # set by force_plain_progress


def force_plain_progress() -> None:
    """Plain progress lines from now on in this process, even on a terminal: for stages that run side by
    side (:mod:`kdiqa.stages.side_by_side`), whose bars would overwrite each other."""
    global _PLAIN_PROGRESS
    _PLAIN_PROGRESS = True


def use_plain_progress() -> bool:
    """Plain progress lines when stdout is not a terminal (redirected to a file, a pipe, CI) or when forced."""
    if _PLAIN_PROGRESS:
        return True
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):
        return True
