"""The one record every dataset loader produces."""
from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class IQASample:
    """One image and its label.

    ``mos`` is normalised to [0, 1] with higher = better whatever the dataset's own scale and
    direction (DMOS is flipped), so losses and metrics never need to know the source;
    ``mos_raw`` keeps the published value for reports.
    """

    path: str
    mos: float
    mos_raw: float
    std: float | None = None
    split: str | None = None  # "train" | "val" | "test" | None (assigned later by a split policy)
    group: str | None = None  # content id (reference image / photograph) for leak-free splits
    dist: tuple[float, ...] | None = None  # score distribution (AVA votes), sums to 1
    theme: str | None = None  # TAD66K theme / AVA challenge


@dataclass
class LoadedDataset:
    """What a loader returns: the samples, the scale it normalised from, and the rows it skipped."""

    name: str
    samples: list[IQASample]
    mos_range: tuple[float, float]
    higher_is_better: bool = True
    skipped: list[str] = field(default_factory=list)  # "file:row: reason", when on_bad_row == "skip"
    has_official_split: bool = False
