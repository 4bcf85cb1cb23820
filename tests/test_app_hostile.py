"""The public app against a hostile visitor: raw HTTP to the queue API, crafted files, a greedy client.

Each case was a hole in the app as it was (issue 16); each test failed there.
"""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from test_app import assert_good_prediction, checkpoints, photo, serve, write_photo  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
IMAGE_ENDPOINTS = {"predict": [0.5, 5, "global"], "graph_effect": [], "explain": [None, "own", "per-map"], "flip_consistency": [None, None]}


def call(url: str, api: str, data: list, headers: dict | None = None, timeout: float = 120) -> tuple[str, object]:
    """POST /call/<api> then read its result stream: ("complete", data) or ("error", message)."""
    r = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data}, headers=headers, timeout=timeout)
    if r.status_code != 200:
        return "refused", r.json().get("detail", r.text)
    return result(url, api, r.json()["event_id"], timeout)


def result(url: str, api: str, event_id: str, timeout: float = 120) -> tuple[str, object]:
    event = None
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{event_id}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = json.loads(line[5:])
                return event, data.get("error") if isinstance(data, dict) and event == "error" else data
    return "closed", None


@pytest.fixture(scope="module")
def url(checkpoints):  # noqa: F811
    with serve(checkpoint_dir=checkpoints) as address:
        yield address


# -- 1. no server file is ever opened -----------------------------------------------------------------
@pytest.mark.parametrize("api", list(IMAGE_ENDPOINTS))
def test_a_server_path_is_refused_the_same_whether_or_not_it_exists(url, photo, tmp_path, api):  # noqa: F811
    outside = write_photo(tmp_path / "server_side.jpg")  # a real image the server could read
    answers = [call(url, api, [{"path": p}, *IMAGE_ENDPOINTS[api]])
               for p in (str(outside), "/etc/hostname", str(tmp_path / "missing.jpg"), "/tmp/gradio/../../etc/passwd")]
    assert all(kind == "error" for kind, _ in answers), answers
    assert len({message for _, message in answers}) == 1, answers  # the text tells nothing about the file
    assert "uploaded to this app" in answers[0][1]


def test_an_upload_through_the_api_still_works(url, photo):  # noqa: F811
    uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("p.jpg", photo.read_bytes(), "image/jpeg")}).json()[0]
    kind, data = call(url, "predict", [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, 0.5, 5, "global"])
    assert kind == "complete", data
    kind, data = call(url, "predict", [{"path": uploaded}, 0.5, 5, "global"])  # no meta: same file, same answer
    assert kind == "complete", data


# -- 6. wrong types -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [(123, "got int"), ("abc", "got str"), ([1, 2], "got list"),
                                             ({"url": "https://example.com/x.jpg"}, "names no file")])
def test_a_wrong_image_type_gets_a_message(url, value, expected):
    kind, message = call(url, "predict", [value, 0.5, 5, "global"])
    assert kind == "error" and message and expected in message, message


# -- 4. data URLs -------------------------------------------------------------------------------------
def test_a_data_url_over_the_cap_is_refused_before_decoding(url):
    from mlc.serving import uploads

    body = "data:image/jpeg;base64," + "A" * (4 * (uploads.MAX_UPLOAD_BYTES // 3 + 1024))
    kind, message = call(url, "predict", [{"url": body}, 0.5, 5, "global"])
    assert kind == "error" and "the limit is 15 MB" in message, message
    huge = body + "A" * (8 * 2**20)  # past the request cap: refused while it arrives, before parsing
    kind, message = call(url, "predict", [{"url": huge}, 0.5, 5, "global"])
    assert kind == "refused" and "Request body over 21 MB" in message, message
    chunks = (huge[i:i + 2**20].encode() for i in range(0, len(huge), 2**20))  # no content-length: cut short
    r = httpx.post(f"{url}gradio_api/queue/join", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413)  # FastAPI reports the cut as a body it could not parse


def test_a_small_data_url_is_predicted_and_cleaned_up_like_an_upload(url, photo, tmp_path):  # noqa: F811
    import gradio as gr

    from mlc.serving.components import _upload_path

    body = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
    kind, data = call(url, "predict", [{"url": body}, 0.5, 5, "global"])
    assert kind == "complete", data
    component = gr.Image()
    path = _upload_path(component, {"url": body})
    assert Path(path).read_bytes() == photo.read_bytes()
    assert path in component.temp_files  # Gradio's delete_cache removes it with the uploads


# -- 2, 3. decompression bombs, decided from the header --------------------------------------------------
def jpeg_declaring(width: int, height: int, progressive: bool, subsampling: int = 2) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height``: a header bomb of a few kB."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 30)).save(buffer, "JPEG", progressive=progressive, subsampling=subsampling)
    data = bytearray(buffer.getvalue())
    marker = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    struct.pack_into(">HH", data, marker + 5, height, width)
    return bytes(data)


def png_deep(path: Path, width: int, height: int) -> Path:
    """A 16-bit greyscale PNG written row by row: 6000 x 6000 costs ~100 KB on disk, 72 MB decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    deflate = zlib.compressobj(9)
    row = b"\x00" + bytes(range(256)) * (2 * width // 256) + b"\x00" * (2 * width % 256)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("progressive", [True, False])
def test_a_jpeg_header_bomb_is_refused_from_its_header(tmp_path, progressive, monkeypatch):
    from mlc.serving import images

    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_declaring(50000, 50000, progressive))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    with pytest.raises(images.RequestError, match=r"Image too large \(50000 x 50000"):
        images.load_image(path)


def test_a_progressive_jpeg_is_held_to_the_full_size_limit(tmp_path, monkeypatch):
    """Draft decoding shrinks the output, not a progressive JPEG's coefficient buffer (81 MP here)."""
    from mlc.serving import images

    path = tmp_path / "progressive.jpg"
    path.write_bytes(jpeg_declaring(9000, 9000, progressive=True))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    with pytest.raises(images.RequestError, match=r"Image too large \(9000 x 9000.*progressive JPEG"):
        images.load_image(path)


def test_the_budget_counts_bytes_per_sample(tmp_path, monkeypatch):
    """A 4:4:4 progressive JPEG under the pixel limit still needs 6 bytes a pixel of coefficients."""
    from mlc.serving import images

    path = tmp_path / "p444.jpg"
    path.write_bytes(jpeg_declaring(7000, 5500, progressive=True, subsampling=0))  # 38.5 MP: 231 MB
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    with pytest.raises(images.RequestError, match="needs about 229 MB"):
        images.load_image(path)
    assert images.pixel_bytes("I;16") == 2 and images.pixel_bytes("F") == 4 and images.pixel_bytes("RGB") == 4


def test_a_deep_image_is_shrunk_before_any_full_size_conversion(tmp_path, monkeypatch):
    from mlc.serving import images

    converted = []
    real = images.to_rgb
    monkeypatch.setattr(images, "to_rgb", lambda im: converted.append(im.size) or real(im))
    decoded = images.load_image(png_deep(tmp_path / "deep.png", 6000, 6000))
    assert decoded.original_size == (6000, 6000) and decoded.image.size == (1024, 1024)
    assert decoded.image.mode == "RGB" and converted == [(1024, 1024)]


def test_a_phone_photo_still_decodes_through_draft(tmp_path):
    from mlc.serving import images

    path = tmp_path / "phone.jpg"
    Image.new("RGB", (8000, 6000), (90, 140, 200)).save(path, quality=85)  # 48 MP baseline
    decoded = images.load_image(path)
    assert decoded.original_size == (8000, 6000) and max(decoded.image.size) <= 1024


def test_a_bomb_through_the_api_is_refused_and_the_app_keeps_serving(url, photo, tmp_path):  # noqa: F811
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_declaring(50000, 50000, progressive=True))
    uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("b.jpg", path.read_bytes(), "image/jpeg")}).json()[0]
    kind, message = call(url, "predict", [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, 0.5, 5, "global"])
    assert kind == "error" and "Image too large (50000 x 50000" in message, message
    uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("p.jpg", photo.read_bytes(), "image/jpeg")}).json()[0]
    assert call(url, "predict", [{"path": uploaded}, 0.5, 5, "global"])[0] == "complete"


# -- 5. a greedy client -----------------------------------------------------------------------------------
def test_a_greedy_client_is_capped_served_round_robin_and_abandoned_jobs_are_dropped(checkpoints, photo):  # noqa: F811
    from mlc.serving import ModelSet

    models = ModelSet.load(checkpoints)
    key = lambda request: request.headers.get("x-client", "anonymous")  # noqa: E731 (every test client is 127.0.0.1)
    with serve(launch_kwargs={"client_key": key}, model_set=models) as url:
        queue = serve.demo._queue
        queue.grace = 60.0  # nobody counts as gone while the requests are set up on a loaded machine
        uploaded = httpx.post(f"{url}gradio_api/upload",
                              files={"files": ("p.jpg", photo.read_bytes(), "image/jpeg")}).json()[0]
        body = {"data": [{"path": uploaded}, 0.5, 5, "global"]}

        def post(client: str) -> httpx.Response:
            return httpx.post(f"{url}gradio_api/call/predict", json=body, headers={"x-client": client}, timeout=30)

        waiting = lambda: [queue._owners.get(e._id) for q in queue.event_queue_per_concurrency_id.values()  # noqa: E731
                           for e in q.queue]
        results: dict[str, tuple] = {}

        def listen(name: str, event_id: str) -> None:
            results[name] = result(url, "predict", event_id)

        listeners = []
        with models._lock:  # the first job runs and blocks on the models: the others wait behind it
            first = post("greedy").json()["event_id"]
            listeners.append(threading.Thread(target=listen, args=("greedy-1", first)))
            listeners[-1].start()
            deadline = time.monotonic() + 30
            while queue.get_active_worker_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            accepted = []
            for i in range(2, 6):
                r = post("greedy")
                accepted.append(r.status_code == 200)
                if r.status_code == 200:
                    listeners.append(threading.Thread(target=listen, args=(f"greedy-{i}", r.json()["event_id"])))
                    listeners[-1].start()
                else:
                    assert "2 requests waiting" in r.json()["detail"]
            assert accepted == [True, True, False, False]  # two waiting at most
            visitor = post("visitor").json()["event_id"]
            listeners.append(threading.Thread(target=listen, args=("visitor", visitor)))
            listeners[-1].start()
            gone = post("gone").status_code  # sends a job and never listens for its result
            assert gone == 200
            assert waiting() == ["greedy", "visitor", "gone", "greedy"]  # round-robin: after one job of each
            listening = {e._id for q in queue.event_queue_per_concurrency_id.values() for e in q.queue
                         if queue._owners.get(e._id) != "gone"}
            while not listening <= set(queue.tracker.open) and time.monotonic() < deadline + 60:
                time.sleep(0.02)  # every visitor that listens has its result stream open
            queue.grace = 0.2
            while queue.dropped == 0 and time.monotonic() < deadline + 90:
                time.sleep(0.02)  # the leaver, who never opened one, is dropped before it runs
        for thread in listeners:
            thread.join(timeout=120)
        assert all(results[n][0] == "complete" for n in results), results
        assert queue.dropped == 1 and waiting() == []


# -- 7, 8. opt-in model loading: what a visitor's checkpoint may ask for ----------------------------------
def _visitor_copy(checkpoints, tmp_path, **changes) -> Path:  # noqa: F811
    import shutil

    folder = tmp_path / "visitor" / "baseline"
    shutil.copytree(checkpoints / "baseline", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder.parent


@pytest.mark.parametrize("changes, expected", [
    ({"image_size": 3000}, "image_size must be a whole number from 32 to 640"),
    ({"classes": [f"c{i}" for i in range(1001)]}, "1 to 1000 names"),
    ({"embeddings": [[0.0] * 2000] * 20}, "at most 1024 numbers"),
    ({"graph": {"adjacency": [[0.0] * 3] * 3}}, "must be 20 x 20"),
])
def test_a_visitors_config_is_held_to_limits_before_loading(checkpoints, tmp_path, changes, expected):  # noqa: F811
    from mlc.serving import ModelSet

    models = ModelSet.load(_visitor_copy(checkpoints, tmp_path, **changes), trusted=False)
    assert not models.methods and expected in models.problems["baseline"], models.problems


def test_a_visitors_config_at_the_papers_size_still_loads(checkpoints, tmp_path):  # noqa: F811
    from mlc.serving import ModelSet

    models = ModelSet.load(_visitor_copy(checkpoints, tmp_path, image_size=576), trusted=False)
    assert list(models.methods) == ["baseline"] and models.methods["baseline"].model.image_size == 576


def test_at_most_four_visitor_model_sets_live_and_an_ended_session_frees_its_own(checkpoints, tmp_path):  # noqa: F811
    import app
    from mlc.serving import ModelSet

    handlers = app.Handlers(ModelSet.load(checkpoints), allow_loading=True)
    source = str(_visitor_copy(checkpoints, tmp_path))
    sessions = [handlers.load_models(source, None)[0] for _ in range(5)]
    assert [bool(s.methods) for s in sessions] == [False, True, True, True, True]  # the oldest was freed
    handlers.models_of(sessions[1])  # used again: now the most recent
    sessions.append(handlers.load_models(source, None)[0])
    assert [bool(s.methods) for s in sessions] == [False, True, False, True, True, True]
    handlers.end_session(sessions[3])
    assert not sessions[3].methods and len(handlers._visitor_sets) == 3
    again = handlers.load_models(source, sessions[4])[0]  # a new load in a session frees its previous set
    assert not sessions[4].methods and again.methods
    with pytest.raises(app.gr.Error, match="unloaded to free memory|No model is loaded"):
        handlers.predict(str(write_photo(tmp_path / "p.jpg")), 0.5, 5, session=sessions[0])


@pytest.mark.parametrize("classes, expected", [(["cat", "dog", "cat"], "'cat' appears more than once"),
                                               (["cat", "do\ng"], "control characters")])
def test_class_names_are_checked_at_load(tiny_setup, tmp_path, classes, expected):
    from conftest import tiny_model

    from mlc.models import CheckpointError, load_model

    model = tiny_model("baseline", tiny_setup)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["classes"] = classes + config["classes"][len(classes):]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=expected):
        load_model(tmp_path / "m")


def test_a_dollar_in_a_class_name_is_drawn_as_text(tiny_setup):
    from conftest import tiny_model

    from mlc import serving
    from mlc.stats import label_statistics

    classes = ["price $\\frac$", "cat", "dog", "person", "car"]
    labels = (np.random.default_rng(0).random((40, 5)) < 0.4).astype(np.int8)
    setup = {**tiny_setup, "classes": classes, "label_stats": label_statistics(labels, classes)}
    models = serving.ModelSet.from_models({"mlgcn": tiny_model("mlgcn", setup)})
    _, stats = serving.label_statistics(models, None)
    path = serving.figure(models, ("heatmap", "mlgcn"), lambda: serving.cooccurrence_heatmap(stats))
    assert Path(path).stat().st_size > 0


@pytest.mark.parametrize("env, expected", [({}, "127.0.0.1"), ({"SPACE_ID": "user/space"}, "0.0.0.0"),
                                           ({"GRADIO_SERVER_NAME": "0.0.0.0"}, "0.0.0.0"),
                                           ({"SPACE_ID": "u/s", "GRADIO_SERVER_NAME": "10.0.0.2"}, "10.0.0.2")])
def test_the_app_listens_on_localhost_unless_on_a_space_or_asked(monkeypatch, env, expected):
    import app

    for name in ("SPACE_ID", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert app.default_server_name() == expected


def test_zerogpu_wraps_the_model_work_only_where_spaces_is_installed(monkeypatch):
    """Without the ``spaces`` package nothing changes; with it, the function gets spaces.GPU(duration)."""
    import sys
    import types

    from mlc.serving import runtime

    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed
    work = lambda: 1  # noqa: E731
    assert runtime.gpu_task(30)(work) is work
    fake = types.ModuleType("spaces")
    fake.GPU = lambda duration: (lambda fn: ("on a GPU", duration, fn))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert runtime.gpu_task(30)(work) == ("on a GPU", 30, work)
