"""steelseg-serve's app (steelseg.serve.make_app) through FastAPI's test client: what each
endpoint answers, bad input, the queue limit, the token, metrics and the review folder.
The app on Ray Serve, under load, is tests/test_serve_load.py (slow)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from steelseg import rle  # noqa: E402
from steelseg.serve import Output, ServeOptions, Service, decode_image, make_app  # noqa: E402

SHAPE = (64, 320)


def strip(seed: int = 0, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A grey image with a bright scratch, so that a tiny model finds something."""
    rng = np.random.default_rng(seed)
    img = rng.normal(110, 12, shape).clip(0, 255).astype(np.uint8)
    img[shape[0] // 3 : shape[0] // 3 + 6, 40:200] = 230
    return img


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    return cv2.imencode(ext, img)[1].tobytes()


def service_of(ckpt: Path) -> Service:
    from steelseg.deploy import load_predictor

    # a low threshold: the tiny model's masks are not empty, so components are compared too
    return Service(load_predictor(ckpt, "torch", "fp32", overrides={"threshold": 0.3}))


@pytest.fixture(scope="module")
def service(tiny_ckpt: Path) -> Service:
    return service_of(tiny_ckpt)


@pytest.fixture
def client(service: Service, tmp_path: Path) -> TestClient:
    options = ServeOptions(model="unused", review_dir=str(tmp_path / "review"), max_pixels=10**6)
    return TestClient(make_app(service, options))


def own_answer(service: Service, img: np.ndarray) -> list[str]:
    """The RLE per class of the Predictor's own masks."""
    masks = service.predictor.predict(img)
    masks = masks[None] if masks.ndim == 2 else masks
    return [rle.encode(m) for m in masks]


def test_predict_answers_what_the_predictor_predicts(client: TestClient, service: Service) -> None:
    img = strip()
    r = client.post("/predict", files={"image": ("a.png", encode(img), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["rle"] for c in body["classes"]] == own_answer(service, img)
    assert body["image"] == {"height": SHAPE[0], "width": SHAPE[1]}
    assert body["model"]["id"].startswith("sha256:")
    (c,) = body["classes"]
    assert c["class_id"] == 0 and c["name"] == "defect"
    assert c["area"] == rle.decode(c["rle"], SHAPE).sum()
    assert sum(k["area"] for k in c["components"]) == c["area"]
    for k in c["components"]:
        x, y, w, h = k["bbox"]
        assert 0 <= x < x + w <= SHAPE[1] and 0 <= y < y + h <= SHAPE[0]
    prob = service.predictor.predict_proba(img)
    assert c["probability"] == pytest.approx(float(prob.max()), abs=1e-4)
    assert body["postprocess"]["threshold"] == 0.3
    assert set(body["timings_ms"]) >= {"decode", "queue_and_model", "total"}
    assert body["batch_size"] == 1


@pytest.mark.parametrize("ext", [".jpg", ".bmp", ".tiff"])
def test_predict_takes_each_format_colour_and_raw_bodies(client: TestClient, ext: str) -> None:
    img = cv2.cvtColor(strip(1), cv2.COLOR_GRAY2BGR)
    r = client.post("/predict", content=encode(img, ext), headers={"content-type": "image/x"})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["width"] == SHAPE[1]


def test_overlay_png(client: TestClient) -> None:
    r = client.post("/predict?overlay=png", files={"image": ("a.png", encode(strip()))})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    picture = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (*SHAPE, 3)


def test_probabilities_are_8_bit_pngs(client: TestClient, service: Service) -> None:
    import base64

    img = strip()
    r = client.post("/predict?probabilities=1", files={"image": ("a.png", encode(img))})
    (b64,) = r.json()["probabilities"]["classes"]
    q = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    prob = service.predictor.predict_proba(img)
    assert q.dtype == np.uint8 and q.shape == SHAPE
    assert np.abs(q / 255 - prob).max() <= 0.5 / 255 + 1e-6


BAD = {
    "empty": (b"", 400, "empty"),
    "not an image": (b"hello, this is text" * 10, 415, "not_image"),
    "truncated JPEG": (encode(strip(), ".jpg")[:-300], 400, "truncated"),
    "GIF": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", 415, None),
    "too many pixels": (encode(np.zeros((1100, 1000), np.uint8)), 413, "too_large"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_4xx_json_and_the_server_keeps_serving(client: TestClient, name: str) -> None:
    data, status, kind = BAD[name]
    r = client.post("/predict", files={"image": ("x", data)})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["detail"] and (kind is None or body["error"] == kind)
    assert client.post("/predict", files={"image": ("a.png", encode(strip()))}).status_code == 200
    metrics = client.get("/metrics").text
    assert f'steelseg_requests_total{{code="{status}",endpoint="/predict"}} 1.0' in metrics


def test_decode_image_reads_grey_from_colour_and_16_bit_tiff() -> None:
    img = strip()
    assert np.array_equal(decode_image(encode(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))), img)
    wide = img.astype(np.uint16) * 257
    assert np.array_equal(decode_image(encode(wide, ".tiff")), img)


def test_v2_endpoints(client: TestClient, service: Service) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/steelseg").json()
    assert meta["name"] == "steelseg" and meta["inputs"][0]["datatype"] == "UINT8"
    assert client.get("/v2/models/steelseg/ready").json()["ready"] is True
    imgs = np.stack([strip(0), strip(1)])
    request = {
        "id": "r1",
        "inputs": [{"name": "image", "shape": list(imgs.shape), "datatype": "UINT8",
                    "data": imgs.ravel().tolist()}],
    }  # fmt: skip
    r = client.post("/v2/models/steelseg/infer", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "r1" and body["model_name"] == "steelseg"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["mask"]["shape"] == [2, *SHAPE]
    mask = np.array(out["mask"]["data"], np.uint8).reshape(2, *SHAPE)
    assert np.array_equal(mask.astype(bool), service.predictor.predict(imgs))
    assert out["area"]["data"] == [int(m.sum()) for m in mask.astype(bool)]
    request["outputs"] = [{"name": "area"}]
    assert [o["name"] for o in client.post("/v2/models/steelseg/infer", json=request).json()[
        "outputs"]] == ["area"]  # fmt: skip


@pytest.mark.parametrize(
    "tensor, kind",
    [
        ({"name": "image", "shape": [1, 4, 5], "datatype": "FP32", "data": [0.0] * 20}, "v2_dtype"),
        ({"name": "image", "shape": [4, 5], "datatype": "UINT8", "data": [0] * 20}, "v2_shape"),
        ({"name": "image", "shape": [1, 4, 5], "datatype": "UINT8", "data": [0] * 19}, "v2_shape"),
        ({"name": "image", "shape": [1, 4, 5, 2], "datatype": "UINT8", "data": [0] * 40},
         "v2_shape"),
        ({"name": "image", "shape": [1, 2, 2], "datatype": "UINT8", "data": [0, 1, 2, 300]},
         "v2_data"),
        ({"name": "image", "shape": [1, 2, 2], "datatype": "UINT8", "data": ["a"] * 4}, "v2_data"),
    ],
)  # fmt: skip
def test_v2_bad_tensors_are_400(client: TestClient, tensor: dict, kind: str) -> None:
    r = client.post("/v2/models/steelseg/infer", json={"inputs": [tensor]})
    assert r.status_code == 400 and r.json()["error"] == kind, r.text


def test_v2_unknown_model_and_bad_json(client: TestClient) -> None:
    assert client.post("/v2/models/other/infer", json={"inputs": []}).status_code == 404
    assert client.get("/v2/models/other").status_code == 404
    r = client.post("/v2/models/steelseg/infer", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "v2_request"


def test_token(service: Service, tmp_path: Path) -> None:
    app = make_app(service, ServeOptions(model="unused", token="s3cret"))
    client = TestClient(app)
    files = {"image": ("a.png", encode(strip()))}
    assert client.post("/predict", files=files).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.post("/predict", files=files, headers=bad).status_code == 401
    assert client.get("/metrics").status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/predict", files=files, headers=ok).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200  # probes need no token
    assert client.get("/").status_code == 200  # the page holds no data; its calls need one


def test_a_full_queue_is_503_with_retry_after(service: Service) -> None:
    import httpx

    release = asyncio.Event()

    async def slow(image: np.ndarray) -> Output:
        await release.wait()
        return service.infer([image])[0]

    app = make_app(service, ServeOptions(model="unused", max_queue=2), infer=slow)
    data = encode(strip())

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            waiting = [asyncio.create_task(c.post("/predict", content=data)) for _ in range(2)]
            while app.state.metrics.queue._value.get() < 2:
                await asyncio.sleep(0.01)
            refused = await c.post("/predict", content=data)
            release.set()
            return [refused, *await asyncio.gather(*waiting)]

    refused, *answered = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"] == "queue_full"
    assert [r.status_code for r in answered] == [200, 200]


def test_review_saves_the_folder_layout(client: TestClient, tmp_path: Path) -> None:
    img = strip()
    files = {"image": ("line-7.png", encode(img))}
    r = client.post("/review", files=files, data={"verdict": "missed", "note": "scratch"})
    assert r.status_code == 200, r.text
    saved = r.json()["saved"]
    review = tmp_path / "review"
    assert np.array_equal(cv2.imread(str(review / saved["image"]), cv2.IMREAD_GRAYSCALE), img)
    mask = cv2.imread(str(review / saved["mask"]), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == SHAPE and set(np.unique(mask)) <= {0, 255}
    rows = (review / "verdicts.csv").read_text().splitlines()
    assert rows[0].startswith("ImageId,Verdict") and ",missed," in rows[1]
    assert "line-7" not in saved["image"]  # the server names files, never the client
    bad = client.post("/review", files=files, data={"verdict": "../../etc"})
    assert bad.status_code == 400 and bad.json()["error"] == "verdict"


def test_metrics_count_requests_errors_and_batches(client: TestClient) -> None:
    client.post("/predict", files={"image": ("a.png", encode(strip()))})
    client.post("/predict", content=b"")
    text = client.get("/metrics").text
    for line in (
        'steelseg_errors_total{kind="empty"} 1.0',
        "steelseg_batch_size_count 1.0",
        "steelseg_queue_depth 0.0",
        'steelseg_request_seconds_count{endpoint="/predict"} 2.0',
    ):
        assert line in text, line


def test_a_gated_four_class_model(tiny_ckpt_4gate: Path, tmp_path: Path) -> None:
    service = service_of(tiny_ckpt_4gate)
    options = ServeOptions(model="unused", review_dir=str(tmp_path / "review"))
    client = TestClient(make_app(service, options))
    img = strip(shape=(256, 320))
    r = client.post("/predict", files={"image": ("a.png", encode(img))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["class_id"] for c in body["classes"]] == [1, 2, 3, 4]
    assert [c["rle"] for c in body["classes"]] == own_answer(service, img)
    _, image_prob = service.predictor.predict_proba(img, return_image_prob=True)
    assert [c["probability"] for c in body["classes"]] == pytest.approx(image_prob, abs=1e-4)
    assert body["postprocess"]["image_probability"] == "the gate head's"
    review = client.post(
        "/review", files={"image": ("a.png", encode(img))}, data={"verdict": "wrong"}
    )
    assert review.status_code == 200
    assert json.loads(json.dumps(review.json()))["saved"]["verdict"] == "wrong"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["missing.onnx"], "no model file missing.onnx"),
        (["{model}", "--max-batch", "0"], "--max-batch"),
        (["{model}", "--port", "x"], "--port"),
    ],
)
def test_command_bad_input_is_one_line_and_exit_2(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from helpers import exit_code
    from steelseg.cli.serve import main

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert exit_code(main, [a.format(model=model) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steelseg-serve: error:") and says in err[0]


def test_a_failure_is_a_counted_500_and_the_server_keeps_serving(service: Service) -> None:
    calls = []

    async def flaky(image: np.ndarray) -> Output:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the engine fell over")
        return service.infer([image])[0]

    client = TestClient(make_app(service, ServeOptions(model="unused"), infer=flaky))
    files = {"image": ("a.png", encode(strip()))}
    r = client.post("/predict", files=files)
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert client.post("/predict", files=files).status_code == 200
    text = client.get("/metrics").text
    assert 'steelseg_errors_total{kind="internal"} 1.0' in text
    assert 'steelseg_requests_total{code="500",endpoint="/predict"} 1.0' in text


def test_a_client_gone_mid_upload_is_499_not_a_server_error(service: Service) -> None:
    app = make_app(service, ServeOptions(model="unused"))
    sent: list[dict] = []
    body = encode(strip())
    messages = iter(
        [
            {"type": "http.request", "body": body[:100], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] in ([], [499])
    text = asyncio.run(_metrics_text(app))
    assert 'steelseg_errors_total{kind="disconnected"} 1.0' in text
    assert 'code="500"' not in text


async def _metrics_text(app) -> str:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return (await c.get("/metrics")).text


def test_command_default_max_pixels_is_the_librarys() -> None:
    """steelseg-serve names its --max-pixels default without importing the service."""
    from steelseg import serve
    from steelseg.cli import serve as serve_cli

    assert serve_cli.MAX_PIXELS == serve.MAX_PIXELS
