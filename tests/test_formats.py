"""Format versions of config.json and eval.json: old files load, newer ones get a clear message."""
import json

import pytest

from conftest import tiny_model


def test_a_config_without_a_version_loads_and_a_newer_one_is_refused_clearly(tiny_setup, tmp_path):
    from mlc.formats import CONFIG_FORMAT
    from mlc.models import CheckpointError, load_model

    tiny_model("baseline", tiny_setup).save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    assert config["format_version"] == CONFIG_FORMAT
    del config["format_version"]  # written before versions existed: version 1
    path.write_text(json.dumps(config))
    assert load_model(tmp_path / "m").classes == tiny_setup["classes"]
    path.write_text(json.dumps({**config, "format_version": CONFIG_FORMAT + 1}))
    with pytest.raises(CheckpointError, match=f"config.json format {CONFIG_FORMAT + 1}, written by a newer mlc"):
        load_model(tmp_path / "m")


def test_a_newer_eval_json_is_named_by_the_app_and_the_report(tiny_setup, tmp_path):
    from mlc.formats import EVAL_FORMAT, FormatError
    from mlc.serving.model_set import _read_evaluation
    from train.report import load_results

    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "eval.json").write_text(json.dumps({"format_version": EVAL_FORMAT + 1, "metrics": {"ap": []}}))
    evaluation, note = _read_evaluation(tmp_path / "baseline")
    assert evaluation is None and "written by a newer mlc" in note
    with pytest.raises(FormatError, match="baseline/eval.json is eval.json format 2"):
        load_results(tmp_path)
