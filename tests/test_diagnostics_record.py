"""The diagnostics record: one reader and writer, versioned, and the shared formatters."""
import math

import pytest

from mlc.diagnostics_record import DIAGNOSTICS_SCHEMA, Diagnostics, num, pct, pct_value, read_diagnostics


def test_an_old_record_is_converted_and_a_newer_one_refused():
    old = {"map": "CAM", "num_images": 12, "localization": {"method": {"pointing": 0.7}, "random": {}, "centre": {}},
           "flip": {"cosine": 0.9, "la": float("nan")}, "graph": None, "something_new": 1}
    record = read_diagnostics({"diagnostics": old})
    assert record.schema == DIAGNOSTICS_SCHEMA and record.localization["grad_cam"] is None
    assert record.faithfulness is None and record.sanity is None and record.extra == {"something_new": 1}
    out = record.to_dict()
    assert out["flip"]["la"] is None and out["something_new"] == 1 and out["schema"] == DIAGNOSTICS_SCHEMA
    assert Diagnostics.from_dict(out).to_dict() == out  # written and read in one place: a fixed point
    with pytest.raises(ValueError, match="diagnostics format 3, written by a newer mlc"):
        Diagnostics.from_dict({**out, "schema": DIAGNOSTICS_SCHEMA + 1})
    assert read_diagnostics({"metrics": {}}) is None


def test_the_shared_formatters():
    assert pct(0.7364) == "73.6" and pct(0.7364, 2, "%") == "73.64%" and pct(None) == pct(math.nan) == "n/a"
    assert pct_value(0.73644, 2) == 73.64 and pct_value(math.nan) is None
    assert num(0.1234) == "0.123" and num(-0.171, "+.2f") == "-0.17" and num(None) == "n/a"


def test_diagnose_writes_the_current_schema(tiny_setup, tmp_path):
    import numpy as np

    from conftest import tiny_model
    from fixtures import make_voc
    from mlc.data import build_dataset
    from mlc.diagnostics import diagnose
    from mlc.stats import label_statistics

    voc = build_dataset("voc2007", make_voc(tmp_path / "voc", annotations={"val": {"v0": ["cat", "dog"], "v1": ["bus"]}}), "val")
    rng = np.random.default_rng(0)
    setup = {**tiny_setup, "classes": voc.classes, "embeddings": rng.normal(size=(len(voc.classes), 8)).astype(np.float32),
             "label_stats": label_statistics((rng.random((40, len(voc.classes))) < 0.3).astype(np.int8), voc.classes)}
    result = diagnose(tiny_model("baseline", setup, image_size=64).eval(), voc, batch_size=6, faithfulness_pairs=0)
    assert result["schema"] == DIAGNOSTICS_SCHEMA and Diagnostics.from_dict(result).to_dict() == result
