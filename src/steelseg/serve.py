"""``steelseg-serve``: the Predictor behind HTTP, for a line camera or a plant's systems.

The service is a FastAPI app (:func:`make_app`) on Ray Serve (:func:`serve_forever`): Ray
Serve runs it in one replica that holds the model, batches the requests that arrive within
``max_wait_ms`` into one engine batch (``@serve.batch``), and drains the requests in flight
when it is shut down. The app itself does the rest, the same under Ray and in a test client:

* ``POST /predict``: one image file (JPEG, PNG, BMP or TIFF; grey or colour; any size up to
  ``max_pixels``), as a multipart field ``image`` or as the raw body. JSON per class: the
  Kaggle RLE, the area, the components with their boxes and mean probabilities, and the image
  probability; the post-processing, the model id and timings. ``?overlay=png`` returns the
  overlay picture instead; ``?probabilities=1`` adds each class's probabilities as an 8-bit
  PNG (the review page re-thresholds them in the browser).
* The Open Inference Protocol (KServe v2) REST endpoints: ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}``, ``/v2/models/{name}/ready`` and
  ``/v2/models/{name}/infer`` with a ``UINT8`` image tensor ``[N, H, W]`` or ``[N, H, W, 3]``.
* ``GET /``: the review page; ``POST /review``: an image and a verdict (``wrong`` or
  ``missed``) saved into the review folder in the folder layout (``images/``, ``masks/`` with
  the model's mask as a starting point, ``classes.csv``, ``verdicts.csv``).
* ``GET /metrics``: Prometheus metrics (requests and errors by kind, latency, batch sizes,
  queue depth).

Bad input is a 4xx JSON ``{"error": kind, "detail": what is wrong}``; more requests waiting
than ``max_queue`` is a 503 with ``Retry-After``. With a token every endpoint but the health
checks and the page itself needs ``Authorization: Bearer <token>``. No endpoint reads a path
the client names: uploads are decoded from memory, and review files are named by the server.

Needs no PyTorch with an ``.onnx`` or ``.xml`` export: ``pip install 'steelseg[serve]'`` on
top of the deploy requirements.
"""

import asyncio
import base64
import csv
import hmac
import io
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import draw, rle
from steelseg.coco import masks_to_coco
from steelseg.deploy import load_predictor
from steelseg.io import file_digest, truncated_jpeg, write_png
from steelseg.labelled import model_class_names
from steelseg.layouts import CLASSES_CSV, write_classes
from steelseg.postprocess import apply_postprocess, class_map
from steelseg.predict import Predictor

log = logging.getLogger(__name__)

#: the formats ``POST /predict`` takes (Pillow's names)
FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
MAX_PIXELS = 4096 * 4096  # default --max-pixels: a 256 x 1600 strip is 409,600
MAX_BODY_BYTES = 256 << 20  # any request body: larger is refused before it is read whole
VERDICTS = ("wrong", "missed")  # the review page's buttons
RETRY_AFTER_S = 1  # what a 503 for a full queue asks the client to wait
DRAIN_S = 60.0  # how long SIGTERM waits for the requests in flight
PAGE = Path(__file__).with_name("serve_page.html")  # the review page at /
V2_DTYPES = {"UINT8": np.uint8}  # the image tensor's datatype


# ----------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ServeOptions:
    """How ``steelseg-serve`` runs: the model, its runtime, batching, limits and access.

    Args:
        model: A checkpoint or an exported model file.
        predictor: :func:`steelseg.deploy.load_predictor`'s keyword arguments (runtime,
            precision, tolerance, post-processing overrides, flips, ...), as every command
            makes them (:func:`steelseg.cli.common.predictor_options`); the batch size is
            ``max_batch``.
        max_batch: Most images in one engine batch.
        max_wait_ms: How long the first request of a batch waits for others.
        max_queue: Most requests waiting for the model; more get 503.
        max_pixels: Largest image accepted (height x width).
        token: The bearer token every endpoint but health and the page needs; None: open.
        review_dir: Where the review page's verdicts are saved.
        name: The model's name in the v2 endpoints.
    """

    model: str
    predictor: Mapping[str, Any] = field(default_factory=dict)
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_pixels: int = MAX_PIXELS
    token: str | None = None
    review_dir: str = "review"
    name: str = "steelseg"

    def __post_init__(self) -> None:
        for key in ("max_batch", "max_queue", "max_pixels"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


class BadRequest(Exception):
    """A request the service refuses: its status, a short kind (the metrics label) and what is
    wrong, said to the client as ``{"error": kind, "detail": detail}``."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


# ----------------------------------------------------------------------------- requests
def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An uploaded image file as uint8 grey (H, W), its header checked before it is decoded.

    Raises:
        BadRequest: empty (400), not an image of :data:`FORMATS` (415), more than
            ``max_pixels`` (413), a truncated JPEG or a damaged file (400).
    """
    import cv2
    from PIL import Image

    if not data:
        raise BadRequest(400, "empty", "empty body: send one image file (JPEG, PNG, BMP, TIFF)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            (width, height), fmt = im.size, im.format
    except Exception:  # Pillow raises many kinds for a file that is not an image
        raise BadRequest(
            415, "not_image", f"not an image file ({len(data)} bytes); send JPEG, PNG, BMP or TIFF"
        ) from None
    if fmt not in FORMATS:
        raise BadRequest(415, "format", f"{fmt} images are not taken; send {', '.join(FORMATS)}")
    if width * height > max_pixels:
        raise BadRequest(
            413,
            "too_large",
            f"the image is {width}x{height} = {width * height} pixels, more than the server's "
            f"--max-pixels {max_pixels}",
        )
    if truncated_jpeg(data):
        raise BadRequest(400, "truncated", "truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise BadRequest(400, "damaged", f"a damaged {fmt} file that cannot be decoded")
    return image


def decode_v2(body: Any, name: str, max_pixels: int = MAX_PIXELS) -> tuple[list[np.ndarray], Any]:
    """The images of an Open Inference Protocol request, and its ``id``.

    The request has one input: ``datatype`` ``UINT8``, ``shape`` ``[N, H, W]`` (grey) or
    ``[N, H, W, 3]`` (RGB), ``data`` flat or nested, row-major.

    Raises:
        BadRequest: anything else (400), or images over ``max_pixels`` (413).
    """
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise BadRequest(400, "v2_request", 'a v2 request is a JSON object with an "inputs" list')
    if not isinstance(body.get("outputs") or [], list):
        raise BadRequest(400, "v2_request", '"outputs" is a list of {"name": ...} objects')
    if len(body["inputs"]) != 1:
        raise BadRequest(
            400, "v2_request", f"{name} takes one input tensor, got {len(body['inputs'])}"
        )
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadRequest(400, "v2_request", "each input is an object with name, shape, datatype")
    dtype, shape = tensor.get("datatype"), tensor.get("shape")
    if dtype not in V2_DTYPES:
        raise BadRequest(
            400, "v2_dtype", f"input datatype {dtype!r}: {name} takes UINT8 images (0..255)"
        )
    ok = (
        isinstance(shape, list)
        and len(shape) in (3, 4)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
        and (len(shape) == 3 or shape[3] in (1, 3))
    )
    if not ok:
        raise BadRequest(
            400,
            "v2_shape",
            f"input shape {shape!r}: {name} takes [N, H, W] (grey) or [N, H, W, 3] (RGB), each "
            ">= 1",
        )
    if shape[1] * shape[2] > max_pixels:
        raise BadRequest(
            413,
            "too_large",
            f"images of {shape[2]}x{shape[1]} pixels, more than the server's --max-pixels "
            f"{max_pixels}",
        )
    try:
        data = np.asarray(tensor.get("data"), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise BadRequest(400, "v2_data", "input data must be a (nested) list of integers") from None
    if data.size != int(np.prod(shape)):
        raise BadRequest(
            400,
            "v2_shape",
            f"input data has {data.size} values, shape {shape} needs {int(np.prod(shape))}",
        )
    if data.size and (data.min() < 0 or data.max() > 255):
        raise BadRequest(400, "v2_data", "UINT8 data must lie in 0..255")
    images = data.astype(np.uint8).reshape(shape)
    if images.ndim == 4:  # RGB (the v2 convention) to grey; one channel is grey already
        rgb = images[..., ::-1] if images.shape[-1] == 3 else None
        images = images[..., 0] if rgb is None else _grey_all(rgb)
    return list(images), body.get("id")


def _grey_all(bgr: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_BGR2GRAY) for a in bgr])


# ----------------------------------------------------------------------------- the model
@dataclass
class Output:
    """One image's model output: probabilities at its own size, (H, W) or (C, H, W), the gate
    head's image probabilities (C,) or None, and the batch it ran in (``first``: this image
    was its first, so the batch is counted once)."""

    prob: np.ndarray
    image_prob: np.ndarray | None
    batch: int
    model_ms: float
    first: bool = True


class Service:
    """The model behind the endpoints: a :class:`~steelseg.predict.Predictor`, its id and
    class names, and how one image's output becomes an answer.

    Args:
        predictor: The model.
        name: Its name in the v2 endpoints.
    """

    def __init__(self, predictor: Predictor, name: str = "steelseg") -> None:
        self.predictor, self.name = predictor, name
        path = predictor.model_file or predictor.checkpoint
        self.model_file = path.name if path is not None else None
        self.model_id = f"sha256:{file_digest(path)}" if path is not None else "in-memory"
        self.names = model_class_names(path, predictor.classes)  # {class id: name}
        self.binary = predictor.classes == 1
        self.lock = threading.Lock()  # one engine batch at a time

    @classmethod
    def load(cls, options: ServeOptions) -> "Service":
        """The model of ``options`` on its runtime (:func:`steelseg.deploy.load_predictor`)."""
        kwargs = {**options.predictor, "batch_size": options.max_batch, "progress": False}
        predictor = load_predictor(options.model, **kwargs)
        return cls(predictor, options.name)

    def infer(self, images: Sequence[np.ndarray]) -> list[Output]:
        """Probabilities of a batch of grey images (one engine batch when it fits)."""
        start = time.perf_counter()
        with self.lock:
            probs, image_probs = self.predictor.predict_proba(list(images), return_image_prob=True)
        ms = (time.perf_counter() - start) * 1000
        n = len(images)
        return [
            Output(probs[i], None if image_probs is None else image_probs[i], n, ms, i == 0)
            for i in range(n)
        ]

    def masks(self, out: Output) -> tuple[np.ndarray, np.ndarray]:
        """The post-processed masks, bool (C, H, W), and the class id of each pixel, uint8
        (H, W) (0: none; a binary model's defects are class 1 here)."""
        mask = apply_postprocess(self.predictor.postprocess, out.prob, out.image_prob)
        if self.binary:
            return mask[None], mask.astype(np.uint8)
        return mask, class_map(mask, out.prob)

    def answer(self, image: np.ndarray, out: Output) -> dict[str, Any]:
        """``POST /predict``'s JSON for one image (without timings)."""
        masks, ids = self.masks(out)
        prob = out.prob[None] if self.binary else out.prob
        coco = masks_to_coco([("image", ids)], self.names, polygons=True, probabilities=[prob])
        classes = []
        for c, channel in enumerate(masks, start=1):
            image_p = out.image_prob[c - 1] if out.image_prob is not None else prob[c - 1].max()
            classes.append(
                {
                    "class_id": rle.ANY_CLASS if self.binary else c,  # as predictions.csv
                    "name": self.names[c],
                    "probability": round(float(image_p), 4),
                    "area": int(channel.sum()),
                    "rle": rle.encode(channel),
                    "components": [
                        {"bbox": a["bbox"], "area": a["area"], "score": a["score"]}
                        for a in coco["annotations"]
                        if a["category_id"] == c
                    ],
                }
            )
        return {
            "model": self.describe(),
            "image": {"height": int(image.shape[0]), "width": int(image.shape[1])},
            "defect": bool(ids.any()),
            "classes": classes,
            "postprocess": {
                **self.predictor.postprocess.to_dict(),
                "tta": list(self.predictor.tta),
                "image_probability": (
                    "the gate head's" if out.image_prob is not None else "the largest pixel's"
                ),
            },
        }

    def overlay_png(self, image: np.ndarray, out: Output) -> bytes:
        """The overlay picture of one image's answer, PNG bytes."""
        import cv2

        masks, ids = self.masks(out)
        picture = draw.prediction_overlay(image, masks[0] if self.binary else masks, ids)
        return cv2.imencode(".png", draw.to_bgr(picture))[1].tobytes()

    def probability_pngs(self, out: Output) -> list[str]:
        """Each class's probabilities quantised to 8 bits (round(p * 255)), as base64 PNGs."""
        import cv2

        prob = out.prob[None] if self.binary else out.prob
        q = np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)
        return [base64.b64encode(cv2.imencode(".png", c)[1].tobytes()).decode() for c in q]

    def describe(self) -> dict[str, Any]:
        """The model: id (its file's digest), file, name, classes, runtime."""
        return {
            "id": self.model_id,
            "name": self.name,
            "file": self.model_file,
            "classes": {str(k): v for k, v in self.names.items()},
            "runtime": self.predictor.describe(),
        }

    def save_review(
        self, folder: Path, image: np.ndarray, verdict: str, note: str = ""
    ) -> dict[str, str]:
        """Save an image and its verdict for relabelling, in the folder layout: the image
        (PNG), the model's mask as a starting point, ``classes.csv`` and a row of
        ``verdicts.csv``. Names are the server's: the time and the image's digest."""
        import hashlib

        import cv2

        digest = hashlib.sha256(cv2.imencode(".png", image)[1].tobytes()).hexdigest()[:12]
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}"
        _, ids = self.masks(self.infer([image])[0])
        if self.binary:
            ids = ids * 255
        write_png(folder / "images" / f"{stem}.png", image)
        write_png(folder / "masks" / f"{stem}.png", ids)
        if not self.binary and not (folder / CLASSES_CSV).exists():
            write_classes(
                folder, {c: (n, _hex(draw.CLASS_RGB.get(c))) for c, n in self.names.items()}
            )
        with self.lock, open(folder / "verdicts.csv", "a", newline="") as f:
            w = csv.writer(f)
            if f.tell() == 0:
                w.writerow(["ImageId", "Verdict", "ModelId", "Time", "Note"])
            w.writerow([f"{stem}.png", verdict, self.model_id, time.strftime("%FT%T"), note])
        return {"image": f"images/{stem}.png", "mask": f"masks/{stem}.png", "verdict": verdict}


# ----------------------------------------------------------------------------- metrics
class Metrics:
    """The Prometheus metrics of one app, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "steelseg_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "steelseg_errors",
            "Refused or failed requests by kind",
            ["kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "steelseg_request_seconds",
            "Time from request to answer",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch = Histogram(
            "steelseg_batch_size",
            "Images per engine batch",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.queue = Gauge(
            "steelseg_queue_depth",
            "Requests waiting for or in the model",
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ----------------------------------------------------------------------------- the app
#: what the app awaits for a batch of images: the model's outputs (batched by Ray Serve in
#: the service, run directly in tests)
Infer = Callable[[np.ndarray], Awaitable[Output]]


def make_app(service: Service, options: ServeOptions, infer: Infer | None = None) -> Any:
    """The FastAPI app of ``steelseg-serve`` (see the module docstring).

    Args:
        service: The model.
        options: Limits, token and review folder.
        infer: Awaited for each image's output; None: the service's own, one image at a time
            in a worker thread (Ray Serve passes its batched method).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    if infer is None:

        async def infer(image: np.ndarray) -> Output:
            return (await asyncio.to_thread(service.infer, [image]))[0]

    metrics = Metrics()
    app = FastAPI(
        title="steelseg-serve",
        description="Steel surface defects: /predict, the Open Inference Protocol (v2), /metrics",
        version=_version(),
    )
    token = options.token
    waiting = [0]  # requests admitted to the model and not yet answered
    open_paths = {"/", "/v2/health/live", "/v2/health/ready"}

    def error(status: int, kind: str, detail: str, headers: dict | None = None) -> Response:
        metrics.errors.labels(kind).inc()
        return JSONResponse({"error": kind, "detail": detail}, status, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable) -> Response:
        start = time.perf_counter()
        path = request.url.path
        endpoint = _endpoint(path)
        if app.state.draining and path != "/v2/health/live":
            response = error(
                503,
                "stopping",
                "the server is stopping; send to another one",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        elif token and path not in open_paths and not _authorized(request, token):
            response = error(
                401,
                "unauthorized",
                "send the header 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        else:
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
                response = error(413, "too_large", f"a body over {MAX_BODY_BYTES} bytes")
            else:
                app.state.in_flight += 1
                try:
                    response = await call_next(request)
                except Exception as e:
                    if _client_gone(e):  # nobody reads this answer (nginx's 499)
                        response = error(499, "disconnected", "the client left mid-request")
                    else:  # our bug, not the client's: logged, answered and counted
                        log.exception("%s %s failed", request.method, path)
                        response = error(500, "internal", "the server failed; see its log")
                finally:
                    app.state.in_flight -= 1
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def run_model(images: list[np.ndarray]) -> list[Output]:
        """The outputs of these images, or BadRequest 503 when the queue is full."""
        if waiting[0] + len(images) > options.max_queue:
            raise BadRequest(
                503,
                "queue_full",
                f"{waiting[0]} requests are waiting (--max-queue {options.max_queue}); retry",
            )
        waiting[0] += len(images)
        metrics.queue.set(waiting[0])
        try:
            outs = await asyncio.gather(*(infer(im) for im in images))
        finally:
            waiting[0] -= len(images)
            metrics.queue.set(waiting[0])
        for out in outs:
            if out.first:  # one observation per engine batch, not per image
                metrics.batch.observe(out.batch)
        return list(outs)

    def refused(e: BadRequest) -> Response:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else None
        return error(e.status, e.kind, e.detail, headers)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Response:
        return HTMLResponse(page_html() if PAGE.is_file() else _NO_PAGE)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            data = await _upload(request)
            image = await asyncio.to_thread(decode_image, data, options.max_pixels)
            decoded = time.perf_counter()
            (out,) = await run_model([image])
        except BadRequest as e:
            return refused(e)
        ran = time.perf_counter()
        if request.query_params.get("overlay") == "png":
            png = await asyncio.to_thread(service.overlay_png, image, out)
            return Response(png, media_type="image/png")
        answer = await asyncio.to_thread(service.answer, image, out)
        if request.query_params.get("probabilities") in ("1", "true", "png"):
            answer["probabilities"] = {
                "encoding": "png",
                "scale": 255,
                "classes": await asyncio.to_thread(service.probability_pngs, out),
            }
        answer["batch_size"] = out.batch
        answer["timings_ms"] = {
            "decode": _ms(decoded - start),
            "queue_and_model": _ms(ran - decoded),
            "model_batch": round(out.model_ms, 2),
            "answer": _ms(time.perf_counter() - ran),
            "total": _ms(time.perf_counter() - start),
        }
        return JSONResponse(answer)

    @app.post("/review")
    async def review(request: Request) -> Response:
        try:
            form = await _form(request)
            verdict = str(form.get("verdict", ""))
            if verdict not in VERDICTS:
                raise BadRequest(400, "verdict", f"verdict must be one of {list(VERDICTS)}")
            upload = form.get("image")
            if upload is None or not hasattr(upload, "read"):
                raise BadRequest(400, "empty", "send the image as the multipart field 'image'")
            image = await asyncio.to_thread(decode_image, await upload.read(), options.max_pixels)
        except BadRequest as e:
            return refused(e)
        saved = await asyncio.to_thread(
            service.save_review,
            Path(options.review_dir),
            image,
            verdict,
            str(form.get("note", ""))[:500],
        )
        return JSONResponse({"saved": saved})

    # -- the Open Inference Protocol (KServe v2)
    @app.get("/v2/health/live")
    async def live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return JSONResponse({"ready": True})

    @app.get("/v2")
    async def server_metadata() -> Response:
        return JSONResponse({"name": "steelseg-serve", "version": _version(), "extensions": []})

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Response:
        if name != service.name:
            return _unknown(name, service, error)
        return JSONResponse(
            {
                "name": service.name,
                "versions": [service.model_id],
                "platform": f"steelseg/{service.predictor.runtime}",
                "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1]}],
                "outputs": [
                    {"name": "mask", "datatype": "UINT8", "shape": [-1, -1, -1]},
                    {
                        "name": "image_probability",
                        "datatype": "FP32",
                        "shape": [-1, service.predictor.classes],
                    },
                    {"name": "area", "datatype": "INT64", "shape": [-1, service.predictor.classes]},
                ],
            }
        )

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        if name != service.name:
            return _unknown(name, service, error)
        return JSONResponse({"name": name, "ready": True})

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        if name != service.name:
            return _unknown(name, service, error)
        try:
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise BadRequest(400, "v2_request", "the body is not JSON") from None
            images, request_id = decode_v2(body, service.name, options.max_pixels)
            outs = await run_model(images)
        except BadRequest as e:
            return refused(e)
        answer = await asyncio.to_thread(_v2_answer, service, images, outs, body, request_id)
        return JSONResponse(answer)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, kind = metrics.render()
        return Response(body, media_type=kind)

    app.state.metrics = metrics
    app.state.service = service
    app.state.in_flight = 0  # requests being answered
    app.state.draining = False  # set by drain(): new requests get 503
    return app


async def drain(app: Any, timeout_s: float = 60.0) -> int:
    """Refuse new requests (503; ``/v2/health/ready`` too) and wait until the requests in
    flight are answered, at most ``timeout_s``; the number still in flight then."""
    app.state.draining = True
    deadline = time.monotonic() + timeout_s
    while app.state.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return app.state.in_flight


def _v2_answer(
    service: Service, images: list[np.ndarray], outs: list[Output], body: Mapping, request_id: Any
) -> dict[str, Any]:
    """The v2 response: ``mask`` (the class id of each pixel, UINT8 [N, H, W]; images of
    several sizes are refused, so N share one), ``image_probability`` (FP32 [N, C]) and
    ``area`` (INT64 [N, C]); only the outputs the request names, when it names any."""
    masks = [service.masks(o) for o in outs]
    probs = [
        o.image_prob
        if o.image_prob is not None
        else (o.prob[None] if service.binary else o.prob).reshape(len(m[0]), -1).max(1)
        for o, m in zip(outs, masks)
    ]
    n, c = len(images), service.predictor.classes
    h, w = images[0].shape
    tensors = {
        "mask": ("UINT8", [n, h, w], np.stack([m[1] for m in masks]).ravel().tolist()),
        "image_probability": ("FP32", [n, c], [round(float(v), 6) for p in probs for v in p]),
        "area": ("INT64", [n, c], [int(ch.sum()) for m in masks for ch in m[0]]),
    }
    wanted = [o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)]
    answer = {
        "model_name": service.name,
        "model_version": service.model_id,
        "outputs": [
            {"name": k, "datatype": d, "shape": s, "data": v}
            for k, (d, s, v) in tensors.items()
            if not wanted or k in wanted
        ],
    }
    if request_id is not None:
        answer["id"] = request_id
    return answer


def _unknown(name: str, service: Service, error: Callable) -> Any:
    return error(404, "model", f"no model {name!r} here; this server serves {service.name!r}")


async def _upload(request: Any) -> bytes:
    """The image of a ``/predict`` request: the multipart field ``image`` (or its only file),
    else the raw body."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await _form(request)
        files = [v for v in form.values() if hasattr(v, "read")]
        upload = form.get("image") if hasattr(form.get("image"), "read") else None
        if upload is None and len(files) == 1:
            upload = files[0]
        if upload is None:
            raise BadRequest(400, "empty", "send the image as the multipart field 'image'")
        return await upload.read()
    return await request.body()


async def _form(request: Any) -> Any:
    try:
        return await request.form()
    except Exception as e:
        if _client_gone(e):  # not a broken body: the middleware counts it
            raise
        raise BadRequest(400, "multipart", "a broken multipart/form-data body") from None


def _client_gone(e: BaseException) -> bool:
    """Whether reading a request failed because its client left: Starlette's
    ``ClientDisconnect``, or Ray Serve cancelling the body's transfer (``TaskCancelledError``,
    named so that the app needs no Ray), perhaps inside anyio's exception group."""
    if type(e).__name__ in ("ClientDisconnect", "TaskCancelledError"):
        return True
    return any(_client_gone(x) for x in getattr(e, "exceptions", ()))


def _authorized(request: Any, token: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


def _endpoint(path: str) -> str:
    """A path as a metrics label (model names folded)."""
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}" + ("/infer" if path.endswith("/infer") else "")
    known = ("/", "/predict", "/review", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready")
    return path if path in known else "other"


def _hex(rgb: tuple[int, int, int] | None) -> str:
    return "" if rgb is None else "#" + "".join(f"{v:02x}" for v in rgb)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _version() -> str:
    import steelseg

    return steelseg.__version__


_NO_PAGE = "<!doctype html><title>steelseg-serve</title><p>POST an image to /predict.</p>"


def page_html() -> str:
    """The review page, with the overlay colours and tint of :mod:`steelseg.draw` filled in
    (the page draws its overlays as the reports do, from the one place they are set)."""
    colours = {
        "class_rgb": {str(c): list(rgb) for c, rgb in sorted(draw.CLASS_RGB.items())},
        "fp_rgb": list(draw.FP_RGB),
        "tint": draw.TINT,
    }
    return PAGE.read_text(encoding="utf-8").replace("__STEELSEG_DRAW__", json.dumps(colours))


# ----------------------------------------------------------------------------- Ray Serve
def serve_forever(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service on Ray Serve until SIGTERM or Ctrl-C, then drain and stop.

    One replica holds the model; ``@serve.batch`` groups the requests that arrive within
    ``options.max_wait_ms`` into one engine batch of at most ``options.max_batch``. A local
    Ray starts with this machine's CPUs, or ``RAY_ADDRESS`` names a cluster to join.
    """
    import signal

    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError("steelseg-serve needs Ray Serve: pip install 'steelseg[serve]'") from None

    ray.init(
        num_cpus=None if os.environ.get("RAY_ADDRESS") else os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    stop = threading.Event()  # ray.init's own handlers would exit mid-request: ours drain
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options={"host": host, "port": port})
    app = serve.run(_deployment(serve, options), name="steelseg", route_prefix="/", blocking=False)
    print(
        f"steelseg-serve: ready on http://{host}:{port}/ (POST /predict; Ctrl-C stops)", flush=True
    )
    stop.wait()
    print("steelseg-serve: stopping: finishing the requests in flight", flush=True)
    try:
        left = app.drain.remote().result(timeout_s=DRAIN_S + 10)
        print(f"steelseg-serve: stopped ({left} request(s) unfinished)", flush=True)
    except Exception as e:  # Ray itself was stopped under us: nothing left to drain
        print(f"steelseg-serve: stopped without draining ({type(e).__name__})", flush=True)
    if os.environ.get("RAY_ADDRESS"):  # a cluster of its own: leave it running
        serve.delete("steelseg")
    ray.shutdown()


def _deployment(serve: Any, options: ServeOptions) -> Any:
    """The Ray Serve application: one replica of the app, its model batched by
    ``@serve.batch``."""

    @serve.ingress()
    class SteelsegServe:
        def __init__(self, options: ServeOptions) -> None:
            self.options = options
            self.service = Service.load(options)
            self.batched.set_max_batch_size(options.max_batch)
            self.batched.set_batch_wait_timeout_s(options.max_wait_ms / 1000)
            self.engine_s = 0.0  # how long the last engine batch took

        def __serve_build_asgi_app__(self) -> Any:
            self.asgi = make_app(self.service, self.options, self.one)  # Ray owns self.app
            return self.asgi

        async def drain(self) -> int:
            return await drain(self.asgi, DRAIN_S)

        async def one(self, image: np.ndarray) -> Output:
            return await self.batched(image)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def batched(self, images: list[np.ndarray]) -> list[Output]:
            # Ray forms the next batch while this one runs, on its timer: while the engine is
            # busy, the next batch waits as long as this one took, so under load batches fill
            # up; an idle server waits --max-wait-ms at most
            idle = self.options.max_wait_ms / 1000
            self.batched.set_batch_wait_timeout_s(max(idle, self.engine_s))
            try:
                outs = await asyncio.to_thread(self.service.infer, images)
            finally:
                self.batched.set_batch_wait_timeout_s(idle)
            self.engine_s = outs[0].model_ms / 1000
            return outs

    cpus = os.cpu_count() or 1
    return (
        serve.deployment(SteelsegServe)
        .options(
            name="steelseg",
            num_replicas=1,
            # our own queue limit answers 503 first; Ray's is the backstop
            max_ongoing_requests=options.max_queue + options.max_batch + 8,
            max_queued_requests=options.max_queue,
            graceful_shutdown_timeout_s=DRAIN_S,
            ray_actor_options={"num_cpus": cpus},
        )
        .bind(options)
    )
