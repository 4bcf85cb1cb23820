"""ONNX export (``mlc.export``, ``python -m train export``): every registered variant, checked against
PyTorch in onnxruntime on batches of other sizes than the traced one (the batch axis is dynamic)."""
import json

import numpy as np
import pytest
import torch

from conftest import tiny_model
from mlc.export import ExportError, ImagesToLogits, check_onnx, export_onnx
from mlc.models import list_models, load_model
from train.cli import main

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZE = 64


def _reference(model, images: torch.Tensor) -> np.ndarray:
    """PyTorch logits of RGB [0, 1] images, normalised here (not by the exported wrapper)."""
    norm = model.normalization
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((images - mean) / std).numpy()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_variant_exports_and_matches_pytorch(name, tiny_setup, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(name, tiny_setup, image_size=SIZE).eval()
    result = export_onnx(model, tmp_path / f"{name}.onnx", check=False, thresholds=[0.3] * model.num_classes)
    session = ort.InferenceSession(str(result["path"]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, SIZE, SIZE]  # dynamic batch, fixed image
    for batch in (1, 5):
        images = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"images": images.numpy()})[0]
        expected = _reference(model, images)
        assert got.shape == (batch, model.num_classes)
        assert np.abs(got - expected).max() < 1e-4, name
    meta = {p.key: p.value for p in onnx.load(str(result["path"])).metadata_props}
    assert json.loads(meta["classes"]) == model.classes and meta["image_size"] == str(SIZE)
    assert json.loads(meta["thresholds"]) == [0.3] * model.num_classes and meta["mlc_model_name"] == name


def test_the_built_in_check_reports_the_difference(tiny_setup, tmp_path):
    model = tiny_model("mlgcn", tiny_setup, image_size=SIZE)
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] < 1e-4


def test_a_graph_that_differs_from_pytorch_is_refused(tiny_setup, tmp_path):
    model = tiny_model("baseline", tiny_setup, image_size=SIZE)
    path = export_onnx(model, tmp_path / "m.onnx", check=False)["path"]
    other = tiny_model("baseline", tiny_setup, image_size=SIZE)  # other random weights
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_onnx(ImagesToLogits(other).eval(), path)


def test_what_cannot_be_exported_gets_one_line_and_no_file(tiny_setup, tmp_path, monkeypatch, capfd):
    model = tiny_model("baseline", tiny_setup, image_size=SIZE)
    head = model.forward_head

    def unsupported(features, explain=False):  # an operator ONNX has no equivalent for
        out = head(features, explain)
        out.logits = out.logits + torch.linalg.svdvals(features[:, :2, :2, :2].flatten(2)[..., :2]).sum(-1, keepdim=True)
        return out

    monkeypatch.setattr(model, "forward_head", unsupported)
    with pytest.raises(ExportError) as err:
        export_onnx(model, tmp_path / "m.onnx")
    message = str(err.value)
    assert "\n" not in message and "baseline (backbone tiny) cannot be exported to ONNX" in message
    assert "svdvals" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one
    captured = capfd.readouterr()
    assert "ONNX graph being constructed" not in captured.out + captured.err  # the exporter's dump is silenced


def test_cli_export(tiny_setup, tmp_path, capsys):
    model = tiny_model("ssgrl", tiny_setup, image_size=SIZE)
    model.save(tmp_path / "model")
    out = tmp_path / "out" / "ssgrl.onnx"
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "onnx", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"input 'images' float32 (batch, 3, {SIZE}, {SIZE}) RGB in [0, 1]" in printed and "onnxruntime matches" in printed
    loaded = load_model(tmp_path / "model")
    images = torch.rand(2, 3, SIZE, SIZE)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})[0]
    assert np.abs(got - _reference(loaded, images)).max() < 1e-4


def test_cli_export_bad_input(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nowhere" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["export", "--model", str(tmp_path), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
