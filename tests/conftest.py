import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlc.models import list_models  # noqa: E402

VARIANTS = list_models()  # the registry is the one list: a new variant is tested without editing tests


@pytest.fixture
def tiny_setup():
    """Classes, training-split statistics and embeddings for a tiny model (no GloVe, no data)."""
    from mlc.stats import label_statistics

    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "person", "car", "bus"]
    labels = (rng.random((60, len(classes))) < 0.4).astype(np.int8)
    return {
        "classes": classes,
        "backbone": "tiny",
        "pretrained": False,
        "label_stats": label_statistics(labels, classes),
        "embeddings": rng.normal(size=(len(classes), 8)).astype(np.float32),
    }


def tiny_model(name, setup, **kw):
    from mlc.models import create_model

    extra = {"hidden_dim": 16} if name == "ssgrl" else {}
    return create_model(name, **setup, **extra, **kw)
