"""``kdiqa predict``: score images with a saved or exported model.

Its own command module because start-up counts here: scoring needs torch and the model, not the
training stack, so this module imports neither Lightning nor diffusers (:mod:`kdiqa.cli.commands`
does, through the stages) and the first score comes in about the time torch and timm take to import.
"""
from __future__ import annotations

import argparse
import sys
import time

from kdiqa.cli.outcome import run_reported
from kdiqa.errors import KdiqaError
from kdiqa.predict import predict


def cmd_predict(args: argparse.Namespace) -> int:
    start = time.monotonic()
    summary = predict(args.model, args.paths, out=args.output, batch_size=args.batch_size, size=args.size,
                      workers=args.workers, draft=args.draft, resume=args.resume)
    if not summary.scored:
        first = f"; the first: {summary.first_error}" if summary.first_error else ""
        raise KdiqaError(f"predict: none of the {summary.rows} images could be scored{first}")
    if summary.out is not None:
        new = summary.rows - summary.resumed
        seconds = time.monotonic() - start
        resumed = f", {summary.resumed} kept from before" if summary.resumed else ""
        print(f"predict: {summary.out}: {summary.rows} rows, {summary.rows - summary.scored} skipped{resumed} "
              f"({new} images in {seconds:.1f} s)", file=sys.stderr)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    return run_reported(cmd_predict, args)
