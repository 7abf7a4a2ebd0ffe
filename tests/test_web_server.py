"""The web server behind ``artshield serve``: uploads, jobs, progress, cancel, downloads, and what it refuses.

Runs a tiny random-weight model through the real worker (Starlette's TestClient; no browser)."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
pytest.importorskip("multipart", reason="the web extra (python-multipart) is not installed")
from starlette.testclient import TestClient  # noqa: E402

from artshield.web.app import create_app  # noqa: E402
from artshield.web.jobs import JobStore, ModelChoice, sanitise_filename  # noqa: E402


def png(width=45, height=33, mode="RGBA", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path, tiny_model):
    gate = threading.Event()
    gate.set()
    loads = []

    def load_model(spec):
        loads.append(spec)
        gate.wait(30)
        return tiny_model

    models = [ModelChoice("tiny", "tiny test model", "tiny", False, "model: tiny")]
    store = JobStore(tmp_path / "work", models, load_model=load_model)
    app = create_app(store, max_upload_bytes=200_000)
    with TestClient(app) as client:
        client.store, client.gate, client.loads = store, gate, loads
        yield client
    store.close()


def upload(client, data, name="art.png"):
    return client.post("/api/uploads", files={"file": (name, data, "application/octet-stream")})


def submit(client, ids, **settings):
    body = {"uploads": ids, "strength": "low", "steps": 2, **settings}
    return client.post("/api/jobs", json=body)


def test_protect_round_trip_matches_the_command(server, tmp_path):
    source = png(45, 33)
    up = upload(server, source, "../../My Painting (final).png")
    assert up.status_code == 200, up.text
    info = up.json()
    assert info["name"] == "My_Painting_final.png" and (info["width"], info["height"], info["has_alpha"]) == (45, 33, True)
    thumb = server.get(info["thumb"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (45, 33)

    job = submit(server, [info["id"]]).json()
    assert job["state"] in ("queued", "running")
    done = server.store.wait(job["id"], timeout=120)
    assert done["state"] == "done", done
    (result,) = done["results"]
    assert result["output"] == "My_Painting_final.protected.png"
    assert done["progress"]["fraction"] == 1 and done["progress"]["steps"] == 2

    got = server.get(f"/api/jobs/{job['id']}/files/{result['output']}?download")
    assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
    out = Image.open(io.BytesIO(got.content))
    orig = Image.open(io.BytesIO(source))
    assert out.size == orig.size and out.mode == "RGBA"
    a, b = np.asarray(out).astype(int), np.asarray(orig).astype(int)
    assert np.array_equal(a[..., 3], b[..., 3])  # alpha kept exactly
    change = np.abs(a[..., :3] - b[..., :3]).max()
    assert 0 < change <= 4  # strength low: 4/255
    metadata = json.loads(out.info["artshield"])  # the command's metadata chunk
    assert metadata["settings"]["method"] == "advdm" and metadata["settings"]["engine"]["steps"] == 2

    report = server.get(f"/api/jobs/{job['id']}/files/report.json").json()
    assert report["images"][0]["output"] == result["output"] and report["settings"]["engine"]["eps"] == pytest.approx(4 / 255)
    archive = zipfile.ZipFile(io.BytesIO(server.get(f"/api/jobs/{job['id']}/files/protected.zip").content))
    assert sorted(archive.namelist()) == ["My_Painting_final.protected.png", "report.json"]
    assert archive.read(result["output"]) == got.content

    for kind in ("before", "after", "diff"):
        preview = server.get(f"/api/jobs/{job['id']}/files/{result[kind]}")
        assert preview.status_code == 200 and max(Image.open(io.BytesIO(preview.content)).size) <= 1024
        crop = server.get(f"/api/jobs/{job['id']}/crop/0?kind={kind}&x=0.9&y=0.1&size=16")
        assert crop.status_code == 200 and Image.open(io.BytesIO(crop.content)).size == (16, 16)


def test_large_images_get_small_previews(server):
    buffer = io.BytesIO()
    Image.new("RGB", (1500, 700), (200, 120, 40)).save(buffer, format="PNG")
    info = upload(server, buffer.getvalue()).json()
    thumb = Image.open(io.BytesIO(server.get(info["thumb"]).content))
    assert max(thumb.size) <= 256 and thumb.size[0] > thumb.size[1]


def test_refused_uploads_say_why(server):
    bad = upload(server, b"just some notes\n", "notes.txt")
    assert bad.status_code == 415 and "notes.txt" in bad.json()["error"]
    big = upload(server, b"\0" * 300_000, "huge.png")
    assert big.status_code == 413 and "limit" in big.json()["error"]
    empty = upload(server, b"", "empty.png")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert list((server.store.workdir / "uploads").iterdir()) == []  # nothing left behind


def test_bad_job_settings_are_refused(server):
    info = upload(server, png()).json()
    assert "method" in submit(server, [info["id"]], method="nope").json()["error"]
    assert "strength" in submit(server, [info["id"]], strength="max").json()["error"]
    assert "model" in submit(server, [info["id"]], model="elsewhere").json()["error"]
    assert "drop it again" in submit(server, ["0" * 32]).json()["error"]
    assert submit(server, [info["id"]], mask="data:image/png;base64,@@@").status_code == 400
    assert server.store.jobs == {}


def test_only_a_jobs_own_files_are_served(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    info = upload(server, png()).json()
    job = submit(server, [info["id"]]).json()
    server.store.wait(job["id"], timeout=120)
    base = f"/api/jobs/{job['id']}"
    for path in (
        f"{base}/files/..%2F..%2F..%2Fsecret.txt",
        f"{base}/files/../../secret.txt",
        f"{base}/files/%2e%2e%2fjob.json",
        f"{base}/files/job.json",
        f"{base}/files/inputs",
        "/api/jobs/..%2F..%2Fsecret.txt/files/report.json",
        f"/api/uploads/{info['id']}/..%2F..%2Fsecret.txt",
        "/static/..%2F..%2F..%2Fsecret.txt",
        "/static/../jobs.py",
    ):
        response = server.get(path)
        assert response.status_code == 404, path
        assert b"private" not in response.content
    assert server.get(f"{base}/crop/5").status_code == 404


def test_cancel_a_queued_and_a_running_job(server):
    server.gate.clear()  # the first job waits in "loading the model"
    info = upload(server, png()).json()
    first = submit(server, [info["id"]], steps=500).json()
    second = submit(server, [info["id"]]).json()
    assert server.get(f"/api/jobs/{second['id']}").json()["queue_position"] == 1
    cancelled = server.post(f"/api/jobs/{second['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    server.post(f"/api/jobs/{first['id']}/cancel")
    server.gate.set()
    done = server.store.wait(first["id"], timeout=120)
    assert done["state"] == "cancelled" and done["results"] == []
    outputs = server.store.jobs[first["id"]].folder / "outputs"
    assert not list(outputs.glob("*.png"))  # no partial output


def test_cancel_during_steps_keeps_no_partial_image(server):
    info = upload(server, png()).json()
    job = submit(server, [info["id"]], steps=10_000).json()
    store = server.store
    with store.lock:
        while store.jobs[job["id"]].progress.get("step", 0) < 2:
            store.lock.wait(0.05)
    server.post(f"/api/jobs/{job['id']}/cancel")
    done = store.wait(job["id"], timeout=120)
    assert done["state"] == "cancelled" and done["progress"]["step"] < 10_000
    assert not list((store.jobs[job["id"]].folder / "outputs").glob("*.png"))
    assert "nothing was kept" in done["notice"]


def test_page_has_no_external_requests_and_a_strict_policy(server):
    page = server.get("/")
    assert page.status_code == 200 and "artshield" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    from pathlib import Path

    import artshield.web.app as web_app

    for path in Path(web_app.__file__).with_name("static").iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name
    config = server.get("/api/config").json()
    assert config["methods"][0]["name"] == "advdm" and [s["name"] for s in config["strengths"]] == ["low", "medium", "high"]
    assert server.post("/api/jobs", json={"uploads": []}, headers={"Origin": "http://evil.example"}).status_code == 403


def test_filenames_are_sanitised():
    assert sanitise_filename("../../etc/passwd") == "passwd"
    assert sanitise_filename("C:\\Users\\me\\art work.PNG") == "art_work.PNG"
    assert sanitise_filename(".hidden.png") == "hidden.png"
    assert sanitise_filename("") == "image"
    assert len(sanitise_filename("a" * 300 + ".png")) == 100 and sanitise_filename("a" * 300 + ".png").endswith(".png")


def test_serve_command_starts_on_loopback_and_prints_the_address(monkeypatch, capsys):
    import uvicorn

    from artshield.cli import main

    seen = {}

    def fake_run(self, sockets=None):  # stands in for the blocking server loop
        seen["address"] = sockets[0].getsockname()
        seen["app"] = self.config.app

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    assert main(["serve", "--port", "0", "--model", "demo"]) == 0
    out, err = capsys.readouterr()
    host, port = seen["address"][:2]
    assert host == "127.0.0.1" and port > 0
    assert f"http://127.0.0.1:{port}/" in out and "NOT protect against real mimicry" in err
    client = TestClient(seen["app"], base_url=f"http://127.0.0.1:{port}")
    assert client.get("/api/config").json()["models"][0]["is_demo"] is True
    assert TestClient(seen["app"], base_url="http://attacker.example").get("/").status_code == 400  # DNS rebinding


def test_serve_argument_errors_are_one_line(capsys):
    from artshield.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "70000"])
    assert exit_info.value.code == 2
    assert main(["serve", "--model", "./no/such/folder", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--port" in err[0] and "no such file or folder" in err[1]
