"""Do the maps depend on the model and on the class? Sanity checks (Adebayo et al. 2018).

- **model-parameter randomisation**: the part of the model its class names
  (``MultiLabelModel.randomization_parameters``: the GCN output for ML-GCN / G-CAM, the head for
  the others) is drawn again at random, the maps recomputed, and each map compared with the
  original by Spearman's rank correlation over its cells. A map that explains the model changes:
  the median |rho| should be small (``depends_on_model``: below ``DEPENDS_BELOW`` = 0.5). A map
  that stays the same shows the image's structure, whatever the model learned.
- **class discrimination**: the map of a present class against the map of a random absent class
  of the same image (same model): a map that explains *this class* differs between the two.

Both read the evidence maps of ``mlc.explain.explanations`` (own and Grad-CAM) on the seeded
present pairs the deletion / insertion measure uses (``mlc.faithfulness.sample_present_pairs``).
A pair whose map (either of the two) is constant has no rank correlation and is left out (counted).
The re-drawn parameters keep each tensor's standard deviation (normal, mean 0), so the randomised
model's logits have the trained model's scale and its maps are not trivially empty.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mlc.explain import EXPLAINERS, explanations
from mlc.faithfulness import DEFAULT_PAIRS, prepare_pairs

DEPENDS_BELOW = 0.5  # median |Spearman| under which a map "depends on the model"


@contextmanager
def randomized_parameters(model, seed: int = 0) -> Iterator[list[str]]:
    """The model with its ``randomization_parameters`` re-drawn (normal, each tensor's own std),
    restored on exit; yields the names of the re-drawn parameters."""
    named = model.randomization_parameters()
    saved = [p.detach().clone() for _, p in named]
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for _, p in named:
                std = float(p.detach().float().std()) if p.numel() > 1 else 0.0
                p.copy_(torch.randn(p.shape, generator=generator).to(p) * (std or 1.0))
        yield [n for n, _ in named]
    finally:
        with torch.no_grad():
            for (_, p), value in zip(named, saved):
                p.copy_(value)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps over their cells (average ranks on ties); nan if
    either is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class RankAgreement:
    """Spearman's rho over pairs: median, median |rho|, and how many pairs had one (``pairs``)."""

    median: float | None
    median_abs: float | None
    pairs: int
    undefined: int

    @classmethod
    def of(cls, rhos: Sequence[float]) -> "RankAgreement":
        values = np.asarray(rhos, dtype=np.float64)
        ok = values[~np.isnan(values)]
        if not len(ok):
            return cls(None, None, 0, len(values))
        return cls(float(np.median(ok)), float(np.median(np.abs(ok))), len(ok), len(values) - len(ok))


@dataclass
class ExplainerSanity:
    kind: str
    model_randomization: RankAgreement
    class_discrimination: RankAgreement
    depends_on_model: bool | None  # median |rho| with the randomised model below DEPENDS_BELOW


@dataclass
class Sanity:
    """The ``sanity`` entry of eval.json's diagnostics (``asdict``)."""

    pairs: int
    seed: int
    randomized: list[str]  # names of the re-drawn parameters
    seconds: float
    explainers: dict[str, ExplainerSanity] = field(default_factory=dict)
    depends_below: float = DEPENDS_BELOW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sanity_checks(model, images: torch.Tensor, labels: np.ndarray, pairs: Sequence[tuple[int, int]], seed: int = 0,
                  explainers: Sequence[str] = EXPLAINERS) -> Sanity:
    """Both checks on ``images`` (B, 3, H, W, already transformed) for the present ``pairs`` (index
    into ``images``, class); ``labels`` (B, C) give each image's absent classes."""
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 3])
    with torch.no_grad():
        features = model.forward_features(images)
    original = explanations(model, features=features, explainers=tuple(explainers))
    with randomized_parameters(model, seed) as names:
        randomized = explanations(model, features=features, explainers=tuple(explainers))
    unique = [e for k, e in enumerate(explainers) if all(original[e] is not original[o] for o in explainers[:k])]
    result = {}
    for e in unique:
        maps, shuffled = original[e].maps.float().cpu().numpy(), randomized[e].maps.float().cpu().numpy()
        model_rho, class_rho = [], []
        for i, c in pairs:
            model_rho.append(spearman(maps[i, c], shuffled[i, c]))
            absent = np.flatnonzero(np.asarray(labels[i]) == 0)
            if len(absent):
                class_rho.append(spearman(maps[i, c], maps[i, int(rng.choice(absent))]))
        agreement = RankAgreement.of(model_rho)
        depends = None if agreement.median_abs is None else agreement.median_abs < DEPENDS_BELOW
        result[e] = ExplainerSanity(original[e].kind, agreement, RankAgreement.of(class_rho), depends)
    return Sanity(pairs=len(pairs), seed=seed, randomized=names, seconds=time.perf_counter() - start, explainers=result)


def sanity_on_dataset(model, dataset, num_pairs: int = DEFAULT_PAIRS, seed: int = 0,
                      device: str | torch.device = "cpu", explainers: Sequence[str] = EXPLAINERS) -> Sanity:
    """``sanity_checks`` on ``num_pairs`` seeded present pairs of ``dataset`` (its test transform applied)."""
    start = time.perf_counter()
    device = torch.device(device)
    model, data, pairs = prepare_pairs(model, dataset, num_pairs, seed, device)
    order = sorted({i for i, _ in pairs})
    if not order:
        return Sanity(pairs=0, seed=seed, randomized=[n for n, _ in model.randomization_parameters()],
                      seconds=time.perf_counter() - start)
    position = {i: k for k, i in enumerate(order)}
    images = torch.stack([data[i][0] for i in order]).to(device)
    result = sanity_checks(model, images, np.asarray(dataset.labels)[order], [(position[i], c) for i, c in pairs],
                           seed, explainers)
    result.seconds = time.perf_counter() - start
    return result
