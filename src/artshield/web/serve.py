"""``artshield serve``: start the local web page and print its address.

    artshield serve                              # http://127.0.0.1:7860/, demo model (or a cached SD checkpoint)
    artshield serve --model ./my-sd-folder --model demo --port 8000 --workdir ~/artshield-jobs

The server listens on 127.0.0.1 unless ``--host`` says otherwise, opens no other connection, and keeps
uploads and results in a temporary folder that is removed on exit (``--workdir`` keeps them, and shows the
finished jobs again after a restart).
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from .. import __version__
from ..cli_support import DTYPE_CHOICES, ArgumentParser, bounded, device_name, positive_int, run_cli
from ..errors import DependencyError, InvalidArgumentError

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def build_parser(prog: str = "artshield serve") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Start a local web page to protect images in the browser (needs: pip install 'artshield[web]').",
        epilog="The demo model shows the mechanics only and does not protect against real mimicry; start the "
        "server with --model pointing at a Stable Diffusion checkpoint for real protection.",
    )
    parser.add_argument("--model", action="append",
                        help="a model the page offers: demo, a hub id, a diffusers folder or a .safetensors file; repeat "
                        "to offer several (default: SD 1.5/2.1 from the local Hugging Face cache if present, and the demo model)")
    parser.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, metavar="{auto,fp32,fp16,bf16}",
                        help="the model weights' precision (default auto: fp32 on CPU, bf16/fp16 on GPUs)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 opens it to your network)")
    parser.add_argument("--port", type=bounded(int, 0, 65535), default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument("--workdir", help="keep uploads and results in this folder (default: a temporary folder removed on exit)")
    parser.add_argument("--max-upload-mb", type=positive_int, default=200, help="largest file accepted, in MB (default 200)")
    parser.add_argument("--max-pixels", type=positive_int,
                        help="refuse images with more pixels than this (default 89478485, Pillow's limit)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.add_argument("--version", action="version", version=f"artshield {__version__}")
    return parser


def main(argv: list[str] | None = None, prog: str = "artshield serve") -> int:
    parser = build_parser(prog)
    return run_cli(prog, parser, argv, lambda args: run(args, prog), "uploads and results stay in the work folder.")


def model_choices(specs: list[str] | None):
    """The models the page offers, default first: the ones named, else the command's default and the demo."""
    from ..models.defaults import choose_default_model, demo_model_warning
    from .jobs import ModelChoice

    def demo() -> ModelChoice:
        return ModelChoice("demo", "demo model (shows how it works; not real protection)", "demo", True,
                           demo_model_warning(False))

    if not specs:
        choice = choose_default_model()
        if choice.is_demo:
            return [demo()]
        return [ModelChoice("default", choice.name, choice.spec, False, choice.notice), demo()]
    choices, seen = [], set()
    for spec in specs:
        if spec in seen:
            continue
        seen.add(spec)
        if spec in ("demo", "demo-inpaint"):
            choices.append(demo())
        else:
            path = Path(spec).expanduser()
            if spec.startswith((".", "/", "~")) and not path.exists():
                raise InvalidArgumentError(f"--model {spec!r}: no such file or folder.")
            choices.append(ModelChoice(f"model{len(choices)}", spec, spec, False, f"model: {spec}"))
    return choices


def check_dependencies() -> None:
    try:
        import multipart  # noqa: F401 - python-multipart, for uploads
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            f"the web page needs the 'web' extra ({exc.name} is missing): pip install \"artshield[web]\"."
        ) from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InvalidArgumentError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                                   "(or --port 0 for a free one).") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace, prog: str = "artshield serve") -> int:
    check_dependencies()
    import uvicorn

    from .app import create_app
    from .jobs import JobStore

    choices = model_choices(args.model)
    sock = bind(args.host, args.port)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="artshield-web-")) if temporary else Path(args.workdir).expanduser()
    try:
        store = JobStore(workdir, choices, device=args.device, dtype=args.dtype, max_pixels=args.max_pixels)
        allowed = LOOPBACK_NAMES if is_loopback(args.host) else None
        app = create_app(store, max_upload_bytes=args.max_upload_mb * 1024 * 1024, allowed_hosts=allowed)
        port = sock.getsockname()[1]
        shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
        print(f"{prog}: open http://{shown}:{port}/ in your browser (Ctrl-C stops the server)", flush=True)
        for choice in choices:
            if choice.is_demo:
                print(f"{prog}: warning: {choice.notice}", file=sys.stderr, flush=True)
        print(f"{prog}: work folder {workdir}{' (removed on exit)' if temporary else ''}", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="info" if args.verbose else "warning", access_log=args.verbose,
                                server_header=False, date_header=False)
        uvicorn.Server(config).run(sockets=[sock])
        store.close()
    finally:
        sock.close()
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
