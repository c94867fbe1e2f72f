"""``kdiqa bench``: the accuracy/speed table a user picks a student from, with the teacher as a yardstick.

- :mod:`kdiqa.bench.models` builds what is measured: random-weight students per backbone (or students
  distilled from the recipe's cache, ``--distill``) and the teacher row;
- :mod:`kdiqa.bench.run` measures them (:mod:`kdiqa.measure`: FLOPs, peak memory, interleaved timing);
- :mod:`kdiqa.bench.rows` is one measured model, as a line of ``bench.csv``;
- :mod:`kdiqa.bench.output` writes ``bench.csv``, ``bench.md`` and ``bench_pareto.png``.

The teacher is timed with random weights when no trained one is named: speed does not depend on the
weights' values, and the true-size ``sd15`` architecture is what a user would distil from.
"""
from kdiqa.bench.output import format_table, pareto_front, plot_pareto, write_bench
from kdiqa.bench.rows import BENCH_COLUMNS, BenchRow, read_csv, write_csv
from kdiqa.bench.run import run_bench

__all__ = ["BENCH_COLUMNS", "BenchRow", "format_table", "pareto_front", "plot_pareto", "read_csv", "run_bench", "write_bench", "write_csv"]
