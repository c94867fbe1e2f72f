"""The embedded default dataset ("mini"): weakly labelled distorted crops of scikit-image's photographs.

Why: a user with no weights and no data must still be able to run the whole flow. Like KADIS-700k,
the labels are not human opinions but full-reference scores of each distorted image against its
own pristine version, so any number of samples can be made from a handful of photographs.

- :mod:`.photographs`: the 18 photographs inside scikit-image's wheel, split by photograph;
- :mod:`.synthesis`: a random crop, flat ones redrawn, then one synthetic distortion;
- :mod:`.label`: the pseudo-MOS ``q = 1 − sqrt(1 − MS-SSIM(distorted, own clean crop))``;
- :mod:`.dataset`: the folder (:func:`make_mini`) and the registered dataset ``mini``;
- :mod:`.pool`: the unlabelled pool beside it (``data.unlabelled: {mini: N}``);
- :mod:`.stream`: an endless stream of fresh, augmented, labelled crops (to fit the shipped teacher).
"""
from kdiqa.data.mini.dataset import DEFAULT_ROOT, make_mini
from kdiqa.data.mini.photographs import PHOTO_KINDS, PHOTOGRAPHS, load_photographs, split_photographs
from kdiqa.data.mini.pool import make_mini_pool
from kdiqa.data.mini.stream import LabelledCropStream

__all__ = [
    "DEFAULT_ROOT", "PHOTOGRAPHS", "PHOTO_KINDS", "LabelledCropStream",
    "load_photographs", "make_mini", "make_mini_pool", "split_photographs",
]  # fmt: skip
