"""The Starlette application behind ``artshield serve``: a static page and a small JSON API.

    GET  /                                   the page (static/index.html)
    GET  /static/...                         its CSS and JavaScript (nothing from a CDN)
    GET  /api/config                         methods, strengths, models, limits
    POST /api/uploads                        one image (multipart field ``file``) → its id and thumbnail
    GET  /api/uploads/{id}/thumb.png         the thumbnail (never the full image)
    POST /api/jobs                           {uploads, method, strength, model, steps, mask} → a queued job
    GET  /api/jobs/{id}                      state, place in the queue, progress, results
    POST /api/jobs/{id}/cancel               cancel a queued or running job
    GET  /api/jobs/{id}/files/{name}         one of the job's own files (protected PNGs, previews, report, zip)
    GET  /api/jobs/{id}/crop/{n}             a 1:1 crop of before / after / ×10 difference

Every error is JSON ``{"error": "one sentence"}`` with a 4xx status. A Content-Security-Policy header keeps
the page from loading or sending anything anywhere but this server; requests whose ``Origin`` is another
site are refused, and when the server is bound to a loopback address only loopback host names are
accepted (no DNS rebinding).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ArtshieldError
from .jobs import ID_PATTERN, STRENGTH_NOTES, JobStore, Settings

STATIC = Path(__file__).with_name("static")
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DEFAULT_MAX_UPLOAD = 200 * 1024 * 1024


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class SecurityHeaders:
    """CSP and friends on every response; a cross-site ``Origin`` on a request is refused."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        host = headers.get(b"host")
        if origin is not None and host is not None and origin.split(b"://", 1)[-1] != host:
            response = error("requests from other sites are refused.", 403)
            return await response(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def create_app(store: JobStore, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The app serving `store`. `allowed_hosts` (e.g. ``["127.0.0.1", "localhost"]``) restricts the Host
    header; None accepts any."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def config(request: Request) -> Response:
        from ..protect.presets import STRENGTHS
        from ..protect.registry import INPAINTING_METHODS, describe_methods

        methods = sorted(describe_methods(), key=lambda item: item[0] != "advdm")
        return JSONResponse({
            "methods": [{"name": name, "summary": summary, "needs_mask": name in INPAINTING_METHODS,
                         "default": name == "advdm"} for name, summary in methods],
            "strengths": [{"name": name, "eps_255": round(eps * 255), "steps": steps, "note": STRENGTH_NOTES[name],
                           "default": name == "medium"} for name, (eps, steps) in STRENGTHS.items()],
            "models": [{"id": m.id, "label": m.label, "is_demo": m.is_demo, "notice": m.notice} for m in store.models],
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": store.max_pixels,
        })

    async def upload(request: Request) -> Response:
        length = request.headers.get("content-length")
        limit_mb = max_upload_bytes / 1024 / 1024
        if length is None:
            return error("the upload has no Content-Length; send the file with a normal form upload.", 411)
        if not length.isdigit() or int(length) > max_upload_bytes + 64 * 1024:
            return error(f"this file is larger than the server's upload limit of {limit_mb:g} MB "
                         "(start the server with a larger --max-upload-mb to allow it).", 413)
        try:
            form = await request.form(max_files=1, max_fields=4)
        except Exception:  # noqa: BLE001 - any malformed multipart body
            return error("the upload could not be read (send one file in the form field 'file').")
        item = form.get("file")
        if item is None or isinstance(item, str):
            return error("send one file in the form field 'file'.")
        data = await item.read()
        await form.close()
        if len(data) > max_upload_bytes:
            return error(f"this file is larger than the server's upload limit of {limit_mb:g} MB.", 413)
        if not data:
            return error(f"{item.filename or 'the file'} is empty.")
        try:
            stored = await run_in_threadpool(store.add_upload, item.filename or "image", data)
        except ArtshieldError as exc:
            return error(" ".join(str(exc).split()), 415)
        return JSONResponse(stored.to_dict())

    async def thumb(request: Request) -> Response:
        path = store.upload_thumb(request.path_params["upload_id"])
        return FileResponse(path, media_type="image/png") if path is not None and path.is_file() else error("no such upload.", 404)

    async def submit(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > max_upload_bytes:
            return error("the request is too large.", 413)
        try:
            body = await request.json()
        except ValueError:
            return error("the request must be JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("uploads"), list):
            return error("the request must name the uploads to protect.")
        mask = None
        if body.get("mask"):
            text = str(body["mask"])
            try:
                mask = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
            except (binascii.Error, ValueError, IndexError):
                return error("the mask must be a PNG image (a data: URL or base64).")
        steps = body.get("steps")
        try:
            settings = Settings(
                method=str(body.get("method") or "advdm"), strength=str(body.get("strength") or "medium"),
                model=str(body.get("model") or ""), steps=None if steps in (None, "") else int(steps),
                seed=int(body.get("seed") or 0),
            )
        except (ValueError, TypeError):
            return error("steps and seed must be whole numbers.")
        try:
            job = await run_in_threadpool(store.submit, [str(u) for u in body["uploads"]], settings, mask)
        except ArtshieldError as exc:
            return error(" ".join(str(exc).split()))
        return JSONResponse(store.describe(job.id))

    def _job(request: Request):
        job_id = request.path_params["job_id"]
        return store.jobs.get(job_id) if ID_PATTERN.fullmatch(job_id) else None

    async def job_state(request: Request) -> Response:
        job = _job(request)
        return JSONResponse(store.describe(job.id)) if job is not None else error("no such job.", 404)

    async def cancel(request: Request) -> Response:
        job = _job(request)
        if job is None:
            return error("no such job.", 404)
        store.cancel(job.id)
        return JSONResponse(store.describe(job.id))

    async def job_file(request: Request) -> Response:
        job = _job(request)
        path = None if job is None else job.file(request.path_params["name"])
        if path is None:
            return error("no such file in this job.", 404)
        name = request.path_params["name"]
        media = {"png": "image/png", "json": "application/json", "zip": "application/zip"}[name.rsplit(".", 1)[-1]]
        download = request.query_params.get("download") is not None
        return FileResponse(path, media_type=media, filename=name if download else None,
                            content_disposition_type="attachment" if download else "inline")

    async def crop(request: Request) -> Response:
        job = _job(request)
        query = request.query_params
        try:
            index = int(request.path_params["index"])
            x, y = float(query.get("x", 0.5)), float(query.get("y", 0.5))
            size = int(query.get("size", 256))
        except ValueError:
            return error("x, y and size must be numbers.")
        kind = query.get("kind", "after")
        if job is None or not 0 <= index < len(job.results) or kind not in ("before", "after", "diff"):
            return error("no such image in this job.", 404)
        if not (0 <= x <= 1 and 0 <= y <= 1):
            return error("x and y are fractions of the width and height, between 0 and 1.")
        data = await run_in_threadpool(store.crop, job, index, kind, x, y, size)
        return Response(data, media_type="image/png")

    routes = [
        Route("/", index),
        Route("/api/config", config),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/uploads/{upload_id}/thumb.png", thumb),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", job_state),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/files/{name}", job_file),
        Route("/api/jobs/{job_id}/crop/{index}", crop),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.store = store
    return app
