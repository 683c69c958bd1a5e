"""Scoring answers against reference answers, and how sure a mean over a few questions is.

The text metrics are SQuAD's (core.text_match). Chat models answer in sentences, so "contains
an accepted answer" is the mark the studio shows as right or wrong. Intervals are bootstrap
percentiles (scipy), fixed by a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.text_match import contains, exact_match, token_f1

RESAMPLES = 2000


@dataclass(frozen=True)
class Score:
    exact: bool
    f1: float
    contained: bool

    @property
    def correct(self) -> bool:
        """The right/wrong mark: the answer is, or contains, an accepted answer."""
        return self.exact or self.contained


def score(prediction: str, accepted: Sequence[str]) -> Score:
    return Score(
        exact_match(prediction, accepted),
        round(token_f1(prediction, accepted), 4),
        contains(prediction, accepted),
    )


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def bootstrap_mean(values: Sequence[float], seed: int = 0) -> Interval:
    """The mean with a 95% percentile-bootstrap interval; the same seed gives the same interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Interval(0.0, 0.0, 0.0)
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        return Interval(mean, mean, mean)  # nothing to resample: every draw gives the same mean
    from scipy.stats import bootstrap

    result = bootstrap(
        (data,),
        np.mean,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    low, high = result.confidence_interval
    return Interval(mean, float(low), float(high))


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Interval:
    """How much better `a` did than `b` on the same questions, with its interval: when the
    interval excludes 0, the difference is unlikely to be chance."""
    if len(a) != len(b):
        raise ValueError("both score lists must cover the same questions")
    return bootstrap_mean(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), seed)
