"""Uploads, jobs and the one worker thread behind ``artshield serve``.

Everything lives in a work folder (a temporary one unless ``--workdir`` names one)::

    uploads/<upload id>/<sanitised name>      a dropped image, checked by the same reader as the command
    uploads/<upload id>/thumb.png             at most THUMB_SIZE pixels a side (never the full image)
    jobs/<job id>/job.json                    the job's state (reloaded when the server restarts)
    jobs/<job id>/inputs/, masks/             the images and masks it protects
    jobs/<job id>/outputs/                    protected PNGs, previews, report.json, protected.zip

Jobs run one at a time (the GPU or CPU is one device), in the order they were queued. A job runs the same
code as ``protect``: :func:`artshield.protect.files.protect_file` with a method built by
``from_strength`` from the registry, so a PNG downloaded from the page is what the command writes. The
engine's progress callback reports every step; returning True from it is how a job is cancelled, and the
image it was working on is then discarded (images finished before the cancel are kept).

Files are served by job id and a name from the job's own list (:meth:`Job.file`), never by a path built
from a request.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import shutil
import threading
import time
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import ArtshieldError, InvalidArgumentError, MaskError
from .previews import comparison_previews, crop_png, png_bytes, thumbnail

logger = logging.getLogger("artshield.web")

THUMB_SIZE = 256  # thumbnails in the drop list
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

#: One sentence per strength on the visible trade-off (shown on the page beside each preset).
STRENGTH_NOTES = {
    "low": "Hardest to see, even on flat colour and skin; the weakest protection. Quickest.",
    "medium": "A faint grain that shows only when you zoom in on smooth areas; the usual choice.",
    "high": "The strongest protection; a fine texture is visible on flat colour and gradients, and it takes twice as long.",
}


def new_id() -> str:
    return secrets.token_hex(16)


def sanitise_filename(name: str, default: str = "image") -> str:
    """A safe file name from a browser's: the last path component, NFKC, only letters, digits, ``._-``
    (others become ``_``), no leading dot, at most 100 characters (the extension kept)."""
    name = unicodedata.normalize("NFKC", str(name or "")).replace("\\", "/").split("/")[-1]
    name = re.sub(r"[^\w.\-]", "_", name, flags=re.ASCII).strip("._ ")
    name = re.sub(r"_+", "_", name)
    name = re.sub(r"_?\._?", ".", name).strip("._")
    if len(name) > 100:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 100 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else name[:100]
    return name or default


@dataclass
class Upload:
    id: str
    name: str
    path: Path
    width: int
    height: int
    has_alpha: bool
    format: str | None

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "width": self.width, "height": self.height,
            "has_alpha": self.has_alpha, "format": self.format, "thumb": f"/api/uploads/{self.id}/thumb.png",
        }


@dataclass
class Settings:
    """What the page asked for; checked by :meth:`JobStore.submit` before a job is queued."""

    method: str = "advdm"
    strength: str = "medium"
    model: str = ""  # a model id from the server's list ("" = the first)
    steps: int | None = None
    seed: int = 0
    eval_samples: int = 8

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Job:
    id: str
    folder: Path
    settings: Settings
    names: list[str]  # input file names, in order
    masked: bool = False
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    notice: str | None = None
    progress: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)  # one per finished image
    files: dict[str, Path] = field(default_factory=dict)  # the only files this job serves
    cancel_requested: bool = False

    def file(self, name: str) -> Path | None:
        """The job's own file called `name`, or None (no path is built from `name`)."""
        path = self.files.get(name)
        return path if path is not None and path.is_file() else None

    def to_dict(self, position: int | None = None) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "queue_position": position,
            "settings": self.settings.to_dict(),
            "names": self.names,
            "masked": self.masked,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "notice": self.notice,
            "progress": self.progress,
            "results": self.results,
            "zip": "protected.zip" if "protected.zip" in self.files else None,
            "report": "report.json" if "report.json" in self.files else None,
        }


class Cancelled(Exception):
    """Raised inside the worker when a job's cancel was seen between images."""


@dataclass
class ModelChoice:
    id: str
    label: str
    spec: str
    is_demo: bool
    notice: str


class JobStore:
    """Uploads and jobs in a work folder, and the worker thread that runs the jobs one at a time.

    Args:
        workdir: where uploads and jobs live.
        models: the models the page may choose, first = default.
        device, dtype: as ``protect --device/--dtype``.
        max_pixels: images above this many pixels are refused at upload (the reader's limit).
        load_model: how a model is loaded (``artshield.models.load`` by default; tests pass a cached one).
    """

    def __init__(
        self,
        workdir: Path,
        models: list[ModelChoice],
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_pixels: int | None = None,
        load_model: Callable | None = None,
        start: bool = True,
    ):
        self.workdir = Path(workdir)
        (self.workdir / "uploads").mkdir(parents=True, exist_ok=True)
        (self.workdir / "jobs").mkdir(parents=True, exist_ok=True)
        self.models = models
        self.device, self.dtype, self.max_pixels = device, dtype, max_pixels
        self._load_model = load_model
        self._loaded: tuple[str, object] | None = None
        self.uploads: dict[str, Upload] = {}
        self.jobs: dict[str, Job] = {}
        self.queue: list[str] = []
        self.running: str | None = None
        self.lock = threading.Condition()
        self._stop = False
        self._reload()
        self.thread = threading.Thread(target=self._work, name="artshield-web-worker", daemon=True)
        if start:
            self.thread.start()

    # ------------------------------------------------------------------ uploads
    def add_upload(self, filename: str, data: bytes) -> Upload:
        """Store a dropped file and check it with the protection's own reader; a thumbnail is made now.
        Raises an ArtshieldError naming the file when it is not an image the command could protect."""
        from ..imageio import read_image

        name = sanitise_filename(filename)
        upload_id = new_id()
        folder = self.workdir / "uploads" / upload_id
        folder.mkdir(parents=True)
        path = folder / name
        try:
            path.write_bytes(data)
            try:
                loaded = read_image(path, max_pixels=self.max_pixels)
            except ArtshieldError as exc:
                reason = str(exc).replace(str(path), "", 1).lstrip(": ").strip()
                raise type(exc)(f"{name}: {reason}") from None
            (folder / "thumb.png").write_bytes(png_bytes(thumbnail(loaded.rgb, loaded.alpha, THUMB_SIZE)))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        upload = Upload(upload_id, name, path, loaded.size[0], loaded.size[1], loaded.has_alpha, loaded.format)
        with self.lock:
            self.uploads[upload_id] = upload
        return upload

    def upload_thumb(self, upload_id: str) -> Path | None:
        upload = self.uploads.get(upload_id) if ID_PATTERN.fullmatch(upload_id or "") else None
        return None if upload is None else upload.path.parent / "thumb.png"

    # ------------------------------------------------------------------ jobs
    def model_choice(self, model_id: str) -> ModelChoice:
        if not model_id:
            return self.models[0]
        for choice in self.models:
            if choice.id == model_id:
                return choice
        raise InvalidArgumentError(f"model {model_id!r} is not one this server was started with "
                                   f"({', '.join(m.id for m in self.models)}).")

    def submit(self, upload_ids: list[str], settings: Settings, mask: bytes | None = None) -> Job:
        """Check the settings and queue a job for these uploads; `mask` is a PNG (white = editable)."""
        from ..protect.presets import STRENGTHS
        from ..protect.registry import get_method

        if not upload_ids:
            raise InvalidArgumentError("add at least one image first.")
        uploads = []
        for upload_id in upload_ids:
            upload = self.uploads.get(upload_id)
            if upload is None:
                raise InvalidArgumentError("an image of this job is no longer on the server; drop it again.")
            uploads.append(upload)
        settings.method = get_method(settings.method).name
        if settings.strength not in STRENGTHS:
            raise InvalidArgumentError(f"strength must be one of {', '.join(STRENGTHS)}, not {settings.strength!r}.")
        if settings.steps is not None and not 1 <= settings.steps <= 10_000:
            raise InvalidArgumentError(f"steps must be between 1 and 10000, not {settings.steps}.")
        settings.model = self.model_choice(settings.model).id
        job = Job(new_id(), self.workdir / "jobs" / "pending", settings, [], masked=mask is not None)
        job.folder = self.workdir / "jobs" / job.id
        for sub in ("inputs", "masks", "outputs", "work"):
            (job.folder / sub).mkdir(parents=True)
        try:
            used: set[str] = set()
            for upload in uploads:
                name = upload.name
                stem, dot, ext = name.rpartition(".")
                n = 2
                while name.lower() in used:
                    name = f"{stem or ext}_{n}{dot}{ext if stem else ''}"
                    n += 1
                used.add(name.lower())
                shutil.copyfile(upload.path, job.folder / "inputs" / name)
                job.names.append(name)
            if mask is not None:
                self._write_masks(job, uploads, mask)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        with self.lock:
            self.jobs[job.id] = job
            self.queue.append(job.id)
            self._save(job)
            self.lock.notify_all()
        return job

    def _write_masks(self, job: Job, uploads: list[Upload], data: bytes) -> None:
        """The mask (any size with the images' shape) resized to each image, nearest neighbour."""
        from PIL import Image, UnidentifiedImageError

        try:
            mask = Image.open(io.BytesIO(data))
            mask.load()
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise MaskError(f"the mask is not an image ({exc}).") from None
        if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
            # A drawn mask: painted strokes are opaque white on a transparent canvas.
            mask = mask.convert("RGBA").getchannel("A").point(lambda v: 255 if v >= 128 else 0)
        else:
            mask = mask.convert("L")
        mw, mh = mask.size
        for upload, name in zip(uploads, job.names, strict=True):
            if abs(mw / mh - upload.width / upload.height) > 0.02 * (upload.width / upload.height):
                raise MaskError(
                    f"the mask is {mw}×{mh} pixels but {name} is {upload.width}×{upload.height}; draw or upload "
                    "a mask with the image's shape (white = may be repainted, black = protected)."
                )
            sized = mask.resize((upload.width, upload.height), Image.Resampling.NEAREST)
            sized.save(job.folder / "masks" / f"{Path(name).stem}.mask.png")

    def cancel(self, job_id: str) -> Job | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self.queue.remove(job.id)
                job.state, job.finished = "cancelled", time.time()
                job.notice = "cancelled before it started."
                shutil.rmtree(job.folder / "work", ignore_errors=True)
                self._save(job)
            elif job.state == "running":
                job.cancel_requested = True
            return job

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run, 2 for the one after... (None when not queued)."""
        with self.lock:
            if job_id not in self.queue:
                return None
            return self.queue.index(job_id) + 1

    def describe(self, job_id: str) -> dict | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            position = self.queue.index(job_id) + 1 if job_id in self.queue else None
            data = job.to_dict(position)
            data["running_ahead"] = self.running is not None and position is not None
            return json.loads(json.dumps(data))  # a snapshot, not live lists

    def close(self, timeout: float = 60.0) -> None:
        """Stop the worker: queued jobs stay queued on disk (a restart marks them failed), a running one is
        cancelled at its next step; waits up to `timeout` seconds for it."""
        with self.lock:
            self._stop = True
            if self.running:
                self.jobs[self.running].cancel_requested = True
            self.lock.notify_all()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def wait(self, job_id: str, timeout: float = 60.0) -> dict:
        """Block until the job has finished (for tests and scripts); its description."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.jobs[job_id].state not in FINISHED:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")
                self.lock.wait(left)
        return self.describe(job_id)

    # ------------------------------------------------------------------ state on disk
    def _save(self, job: Job) -> None:
        from ..fileio import write_json_atomic

        data = job.to_dict()
        data["files"] = {name: str(path.relative_to(job.folder)) for name, path in job.files.items()}
        write_json_atomic(job.folder / "job.json", data, what="job state")

    def _reload(self) -> None:
        """Jobs from an earlier run in the same work folder (``--workdir``): finished ones are shown again;
        one that was queued or running when the server stopped is marked failed."""
        for state_file in sorted((self.workdir / "jobs").glob("*/job.json")):
            try:
                data = json.loads(state_file.read_text(encoding="utf-8"))
                folder = state_file.parent
                if not ID_PATTERN.fullmatch(folder.name) or data.get("id") != folder.name:
                    continue
                job = Job(folder.name, folder, Settings(**data["settings"]), list(data["names"]),
                          masked=bool(data.get("masked")), state=data["state"], created=data["created"],
                          started=data.get("started"), finished=data.get("finished"), error=data.get("error"),
                          notice=data.get("notice"), progress=data.get("progress") or {},
                          results=list(data.get("results") or []))
                for name, rel in (data.get("files") or {}).items():
                    path = (folder / rel).resolve()
                    if path.is_relative_to(folder.resolve()):
                        job.files[name] = path
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring %s: %s", state_file, exc)
                continue
            if job.state not in FINISHED:
                job.state, job.error = "failed", "the server stopped while this job was queued or running."
                job.finished = time.time()
                self._save(job)
            self.jobs[job.id] = job

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self._stop:
                    self.lock.wait()
                if self._stop:
                    return
                job = self.jobs[self.queue.pop(0)]
                self.running = job.id
                job.state, job.started = "running", time.time()
                job.progress = {"phase": "loading the model", "image": 0, "images": len(job.names), "fraction": 0.0}
                self._save(job)
                self.lock.notify_all()
            try:
                self._run(job)
                state, error = ("cancelled" if job.cancel_requested else "done"), None
            except Cancelled:
                state, error = "cancelled", None
            except ArtshieldError as exc:
                state, error = "failed", " ".join(str(exc).split())
            except Exception as exc:  # noqa: BLE001 - the worker must survive any job
                logger.exception("job %s failed", job.id)
                state, error = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            shutil.rmtree(job.folder / "work", ignore_errors=True)
            with self.lock:
                job.state, job.error, job.finished = state, error, time.time()
                if state == "cancelled":
                    kept = len(job.results)
                    job.notice = (f"cancelled; the {kept} image{'s' if kept != 1 else ''} finished before are kept."
                                  if kept else "cancelled; nothing was kept.")
                job.progress = {**job.progress, "phase": state, "eta_seconds": 0}
                self.running = None
                self._save(job)
                self.lock.notify_all()

    def _model(self, choice: ModelChoice, spec: str):
        if self._loaded is not None and self._loaded[0] == spec:
            return self._loaded[1]
        self._loaded = None  # free the previous model before loading another
        if self._load_model is not None:
            model = self._load_model(spec)
        else:
            from ..models import load

            model = load(spec, device=self.device, dtype=self.dtype)
        self._loaded = (spec, model)
        return model

    def _run(self, job: Job) -> None:
        from ..fileio import publish_file, write_bytes_atomic, write_json_atomic
        from ..imageio import read_image, read_mask
        from ..models.defaults import demo_model_warning
        from ..protect import files
        from ..protect.registry import INPAINTING_METHODS, get_method

        settings = job.settings
        method_cls = get_method(settings.method)
        choice = self.model_choice(settings.model)
        spec = choice.spec
        if choice.is_demo and method_cls.name in INPAINTING_METHODS:
            spec = "demo-inpaint"  # as `protect` picks for methods that model an inpainting edit
        notes = {"demo_model_warning": demo_model_warning(spec == "demo-inpaint")} if choice.is_demo else {}
        model = self._model(choice, spec)
        if job.cancel_requested:
            raise Cancelled
        n = len(job.names)
        timing = {"start": None, "per_step": None}

        def on_step(info) -> bool:
            now = time.perf_counter()
            if timing["start"] is None:
                timing["start"] = now - 1e-9
            per_step = (now - timing["start"]) / max(info.step, 1)
            timing["per_step"] = per_step
            done_images = job.progress.get("image", 1) - 1
            left_steps = (info.steps - info.step) + (n - done_images - 1) * info.steps
            with self.lock:
                job.progress = {
                    **job.progress, "phase": "protecting", "step": info.step, "steps": info.steps,
                    "chunk": info.chunk + 1, "chunks": info.chunks,
                    "fraction": (done_images + info.step / info.steps) / n,
                    "eta_seconds": round(left_steps * per_step, 1),
                }
            return True if job.cancel_requested else None

        kwargs = {"seed": settings.seed, "progress": on_step}
        if settings.steps is not None:
            kwargs["steps"] = settings.steps
        method = method_cls.from_strength(model, settings.strength, **kwargs)
        report = {
            "artshield_version": __version__,
            "model": choice.label if not choice.is_demo else spec,
            "model_source": str(getattr(model, "source", spec)),
            "model_chosen_by": "artshield serve",
            **notes,
            "device": str(model.device),
            "dtype": str(model.dtype).replace("torch.", ""),
            "compute_dtype": str(model.compute_dtype or model.dtype).replace("torch.", ""),
            "settings": method.config,
            "images": [],
            "skipped": [],
        }
        started = time.perf_counter()
        outputs, work = job.folder / "outputs", job.folder / "work"
        for index, name in enumerate(job.names):
            if job.cancel_requested:
                raise Cancelled
            with self.lock:
                job.progress = {**job.progress, "phase": "protecting", "image": index + 1, "images": n,
                                "name": name, "step": 0}
            timing["start"] = time.perf_counter()  # the time left counts the method's set-up too
            source = job.folder / "inputs" / name
            out_name = f"{Path(name).stem}.protected.png"
            mask_path = job.folder / "masks" / f"{Path(name).stem}.mask.png"
            mask = read_mask(mask_path) if job.masked else None
            loaded = read_image(source, max_pixels=self.max_pixels)
            entry = files.protect_file(
                method, files.Job(source, work / out_name), eval_samples=settings.eval_samples,
                mask=mask, mask_path=mask_path if job.masked else None, loaded=loaded, notes=notes,
            )
            if job.cancel_requested:  # the engine stopped early: that image is not kept
                (work / out_name).unlink(missing_ok=True)
                raise Cancelled
            with self.lock:
                job.progress = {**job.progress, "phase": "making previews"}
            output = publish_file(work / out_name, outputs / out_name)
            saved = read_image(output)
            stem = f"{index:03d}"
            previews = {f"{stem}.{kind}.png": image for kind, image in comparison_previews(loaded, saved).items()}
            for preview_name, image in previews.items():
                write_bytes_atomic(outputs / preview_name, png_bytes(image), what="preview")
            entry = {**entry, "input": name, "output": out_name, "mask": mask_path.name if job.masked else None}
            report["images"].append(entry)
            report["total_seconds"] = round(time.perf_counter() - started, 3)
            write_json_atomic(outputs / "report.json", report)
            result = {
                "index": index, "name": name, "output": out_name,
                "width": entry["width"], "height": entry["height"], "has_alpha": entry["has_alpha"],
                "linf_255": entry.get("linf_255"), "psnr_db": _finite(entry.get("psnr_db")),
                "ssim": entry.get("ssim"), "objective_before": entry.get("objective_before"),
                "objective_after": entry.get("objective_after"), "seconds": entry.get("seconds"),
                "before": f"{stem}.before.png", "after": f"{stem}.after.png", "diff": f"{stem}.diff.png",
            }
            with self.lock:
                job.files[out_name] = output
                for preview_name in previews:
                    job.files[preview_name] = outputs / preview_name
                job.files["report.json"] = outputs / "report.json"
                job.results.append(result)
                job.progress = {**job.progress, "fraction": (index + 1) / n}
                self._save(job)
        self._write_zip(job)

    def _write_zip(self, job: Job) -> None:
        """protected.zip: every protected PNG and the report (stored, not recompressed: PNGs are already)."""
        from ..fileio import atomic_write

        outputs = job.folder / "outputs"

        def write(handle) -> None:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
                for result in job.results:
                    archive.write(outputs / result["output"], result["output"])
                archive.write(outputs / "report.json", "report.json")

        if job.results:
            atomic_write(outputs / "protected.zip", write, what="zip")
            with self.lock:
                job.files["protected.zip"] = outputs / "protected.zip"

    # ------------------------------------------------------------------ 1:1 crops
    def crop(self, job: Job, index: int, kind: str, x: float, y: float, size: int) -> bytes:
        """A `size`-pixel square at full resolution around (x, y) (fractions of the width and height) of the
        original (`before`), the protected image (`after`) or the perturbation ×10 (`diff`), as PNG."""
        from ..imageio import read_image

        result = job.results[index]
        before = read_image(job.folder / "inputs" / result["name"], max_pixels=self.max_pixels)
        after = None if kind == "before" else read_image(job.folder / "outputs" / result["output"], max_pixels=self.max_pixels)
        return crop_png(before, after, kind, x, y, size)


def _finite(value):
    return value if isinstance(value, int | float) and value == value and abs(value) != float("inf") else None
