"""Speed and memory at Stable Diffusion scale, without weights: every knob measured side by side.

The cost of a step does not depend on the weights' values, so a random-initialised model with SD-1.5's (or
SD-2.1's) exact component configs (:data:`artshield.models.demo.architecture.ARCHITECTURES`, tokenizer built
offline) times and sizes what a real checkpoint would. Everything runs in fresh subprocesses (``--worker``),
one at a time; inside each, the variants being compared alternate (A B C A B C ...) so drift of the machine
hits them alike. A step's time is the gap between the engine's progress callbacks, from the second step on
(the first one includes set-up: prompt embedding, targets, warm-up).

Sections (``--sections``, default all):

* ``knobs``: AdvDM and SDS+ steps under each precision/layout knob: ``fp32`` (exact, the old default),
  ``bf16`` (autocast over fp32 weights), ``bf16-cl`` (and channels-last VAE weights), ``bf16-cl2`` (the UNet's
  too), ``fp32-cl``, ``bf16-lm`` (bf16 with ``--low-memory``'s gradient checkpointing);
* ``allocator``: the same AdvDM/SDS+ steps in one subprocess with glibc's defaults and one with
  :func:`artshield.allocator.keep_freed_memory` (what every command applies), alternating subprocesses;
* ``methods``: every method's step at the defaults ``load()`` picks on this machine (+ the allocator);
* ``components``: VAE encoder and UNet forward, and forward + input-gradient, fp32 vs bf16 vs bf16 with the
  weights handed to autocast already in bf16 (``bf16-stored``, not adopted; its gradient difference is recorded);
* ``attention``: the share of a bf16 UNet forward + input-gradient spent in attention (the profiler's self time of
  the scaled-dot-product kernels), and the UNet's largest self-attention alone, forward + backward, under PyTorch's
  flash kernel, the matrix-product kernel, and the flash kernel with the head dimension zero-padded (48, 64);
* ``fidelity``: cosine of bf16's input gradient (AdvDM and SDS+ objectives) to fp32's, on this model and the
  demo model;
* ``overhead``: an AdvDM step through the engine vs the bare loop of ``engine_overhead.py`` (same knobs);
* ``memory``: the peak resident memory of a step above the loaded model (``VmHWM`` after a ``clear_refs``
  reset, large blocks through mmap so RSS follows live tensors; ``max_memory_allocated`` on CUDA), per
  method, with and without ``--low-memory`` (gradient checkpointing).

    python benchmarks/sd_scale.py [--arch sd15|sd21] [--sizes 256 512] [--repeats 3] [--device cpu|cuda] \
        [--sections knobs allocator methods components fidelity overhead memory] [--note TEXT] [--output FILE]
    python benchmarks/sd_scale.py --device cuda --sections methods memory --gpu-steps 100     # on a GPU

Results: printed, and written to ``benchmarks/results/sd_scale.json`` by the script itself (``--output``).
A smoke run of the whole script on the tiny architecture takes seconds:
``--arch tiny --sizes 32 --repeats 1 --output /tmp/x.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from artshield.cli_support import ArgumentParser, positive_int  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory_probe, beside this script (not a package)
from memory_probe import malloc_trim, proc_status_kb, reset_peak_rss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("knobs", "allocator", "methods", "components", "attention", "fidelity", "overhead", "memory")
KNOBS = {  # name -> (compute dtype, channels-last VAE, channels-last UNet, gradient checkpointing)
    "fp32": ("fp32", False, False, False),
    "bf16": ("bf16", False, False, False),
    "bf16-cl": ("bf16", True, False, False),
    "bf16-cl2": ("bf16", True, True, False),
    "fp32-cl": ("fp32", True, False, False),
    "bf16-lm": ("bf16", False, False, True),
}
METHODS = ("advdm", "sds+", "sds-", "photoguard", "mist", "mist-lunet")
SETTINGS = {"eps": 8 / 255, "step_size": 1 / 255, "norm": "linf", "samples_per_step": 1, "seed": 0}


# ============================================================================ the model
def build_model(arch: str, device: str, dtype: str = "auto", compute: str = "auto"):
    """A random-initialised model of `arch` ("sd15", "sd21", "demo", "tiny"), or the trained demo model for
    ``"demo-trained"``, on `device` with the precision and layout policy `load()` would apply (or the precision
    given)."""

    from artshield.models import DiffusionModel, load
    from artshield.models.demo.architecture import PREDICTION_TYPES, build_components
    from artshield.models.demo.tokenizer import build_tokenizer
    from artshield.models.device import resolve_compute_dtype, resolve_device, resolve_dtype

    if arch == "demo-trained":
        model = load("demo", device=device, dtype=dtype, compute_dtype=compute)
    else:
        tokenizer = build_tokenizer(["a painting", "a photo"], vocab_size=600, model_max_length=77 if arch.startswith("sd") else 16)
        components = build_components(arch, tokenizer, seed=0, prediction_type=PREDICTION_TYPES.get(arch, "epsilon"))
        model = DiffusionModel(**components, source=f"{arch} (random weights)")
        where = resolve_device(device)
        weights = resolve_dtype(None if dtype == "auto" else dtype, where)
        model.to(where, weights).freeze()
        model.compute_dtype = resolve_compute_dtype(compute, where, weights, sum(p.numel() for p in model.unet.parameters()))
        model.use_preferred_layout()  # as load() does
    return model


def set_knob(model, knob: str) -> None:
    import torch

    compute, vae_channels_last, unet_channels_last, low_memory = KNOBS[knob]
    model.compute_dtype = torch.bfloat16 if compute == "bf16" else None
    model.use_channels_last(vae=vae_channels_last, unet=unet_channels_last)
    model.enable_low_memory(low_memory)


def images_for(model, size: int, batch: int = 1):
    import torch

    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(model.device)


def sync(model) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize()


def step_times(model, method_name: str, images, steps: int) -> list[float]:
    """Seconds of steps 2..`steps` of one protection run (callback gaps; the first step includes set-up)."""
    from artshield.protect import get_method

    stamps: list[float] = []

    def tick(info) -> None:
        sync(model)
        stamps.append(time.perf_counter())

    method = get_method(method_name)(model, steps=steps, tile_size=max(images.shape[-2:]), progress=tick, **SETTINGS)
    method.protect(images)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


# ============================================================================ workers (one subprocess each)
def worker_time(args) -> dict:
    """Alternate (knob, method) variants at one size; return per-variant step times."""
    model = build_model(args.arch, args.device)
    images = images_for(model, args.size)
    variants = [v.split("/") for v in args.variants]
    times: dict[str, list[float]] = {"/".join(v): [] for v in variants}
    for knob, method in variants:  # warm-up: kernels, oneDNN primitives, prompt cache
        if knob != "default":
            set_knob(model, knob)
        step_times(model, method, images, 1)
    for _ in range(args.repeats):
        for knob, method in variants:
            if knob != "default":
                set_knob(model, knob)
            times[f"{knob}/{method}"] += step_times(model, method, images, args.steps)
    return {"size": args.size, "times": times, "compute_dtype": str(model.compute_dtype), "threads": _threads()}


def worker_components(args) -> dict:
    """VAE encoder and UNet: forward, and forward + gradient with respect to the input, fp32 vs bf16."""
    import torch

    model = build_model(args.arch, args.device, compute="fp32")
    images = images_for(model, args.size)
    latents = model.encode(images, mode="mean").detach()
    embeds = model.embed_prompt("a painting", batch_size=1)
    t = torch.tensor([500], device=model.device)

    def vae(grad: bool):
        x = images.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = model.encode(x, mode="mean")
            if grad:
                torch.autograd.grad(out.sum(), x)

    def unet(grad: bool):
        z = latents.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = model.predict_noise(z, t, embeds)
            if grad:
                torch.autograd.grad(out.square().mean(), z)

    # The convolution and linear weights of the VAE and UNet in bf16, made once (as stored weights would be).
    copies = [(param, param.data.to(torch.bfloat16))
              for module in (*model.vae.modules(), *model.unet.modules()) if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
              for param in (module.weight, module.bias) if param is not None]  # fmt: skip

    @contextlib.contextmanager
    def stored_in_bf16(stored: bool):
        """With `stored`, autocast is handed those bf16 copies (what it casts the weights to at every call) for
        one timed call, backward included; swapping them in is a pointer change."""
        masters = [(param, param.data) for param, _ in copies] if stored else []
        for param, copy in copies if stored else ():
            param.data = copy
        try:
            yield
        finally:
            for param, data in masters:
                param.data = data

    parts = {"vae_forward": (vae, False), "vae_forward_backward": (vae, True),
             "unet_forward": (unet, False), "unet_forward_backward": (unet, True)}
    # bf16-stored: bf16 autocast with the weights already in bf16 (not adopted; measured for what it would save).
    dtypes = ({"fp32": (None, False), "bf16": (torch.bfloat16, False), "bf16-stored": (torch.bfloat16, True)}
              if model.device.type == "cpu" else {"weights": (None, False)})  # fmt: skip
    times = {f"{d}/{p}": [] for d in dtypes for p in parts}
    for repeat in range(args.repeats + 1):
        for d, (compute, stored) in dtypes.items():
            model.compute_dtype = compute
            for p, (fn, grad) in parts.items():
                sync(model)
                start = time.perf_counter()
                with stored_in_bf16(stored):
                    fn(grad)
                sync(model)
                if repeat:  # the first round warms up
                    times[f"{d}/{p}"].append(time.perf_counter() - start)
    out = {"size": args.size, "times": times}
    if "bf16-stored" in dtypes:  # is handing autocast bf16 weights exact? (it should be bit for bit)
        model.compute_dtype = torch.bfloat16
        grads = []
        for stored in (False, True):
            z = latents.clone().requires_grad_(True)
            with stored_in_bf16(stored):
                grads.append(torch.autograd.grad(model.predict_noise(z, t, embeds).square().mean(), z)[0])
        out["bf16_stored_unet_grad_max_abs_diff"] = float((grads[0] - grads[1]).abs().max())
    return out


def worker_attention(args) -> dict:
    """Where the UNet's time goes in attention, and whether another attention kernel would be faster."""
    import math

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    model = build_model(args.arch, args.device)
    latents = model.encode(images_for(model, args.size), mode="mean").detach()
    embeds = model.embed_prompt("a painting", batch_size=1)
    t = torch.tensor([500], device=model.device)

    def unet() -> None:
        z = latents.clone().requires_grad_(True)
        torch.autograd.grad(model.predict_noise(z, t, embeds).float().square().mean(), z)

    unet()  # warm-up
    share = None
    if model.device.type == "cpu":  # on CUDA the CPU profile would time kernel launches, not kernels
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            unet()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        share = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key) / total if total else None

    # The largest self-attention of the UNet: the first down block's, over every latent position.
    block = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    heads, width = block.heads, block.inner_dim
    tokens = latents.shape[-2] * latents.shape[-1]
    dtype = model.compute_dtype or model.dtype
    generator = torch.Generator(model.device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, width // heads, generator=generator, device=model.device, dtype=dtype)
               for _ in range(3))  # fmt: skip

    def attend(backend, pad: int | None) -> float:
        qq, kk, vv = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
        sync(model)
        start = time.perf_counter()
        a, b, c = ((torch.nn.functional.pad(x, (0, pad - x.shape[-1])) for x in (qq, kk, vv)) if pad else (qq, kk, vv))
        with sdpa_kernel(backend):
            out = torch.nn.functional.scaled_dot_product_attention(a, b, c, scale=1 / math.sqrt(q.shape[-1]))
        out[..., : q.shape[-1]].float().square().sum().backward()
        sync(model)
        return time.perf_counter() - start

    head_dim = width // heads
    variants = {"flash": (SDPBackend.FLASH_ATTENTION, None), "math": (SDPBackend.MATH, None),
                **{f"flash-pad{p}": (SDPBackend.FLASH_ATTENTION, p) for p in (48, 64) if p > head_dim}}  # fmt: skip
    if model.device.type == "cuda":
        variants["efficient"] = (SDPBackend.EFFICIENT_ATTENTION, None)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):
        for name, (backend, pad) in variants.items():
            try:
                seconds = attend(backend, pad)
            except RuntimeError:  # a backend this build or device lacks
                continue
            if repeat:
                times[name].append(seconds)
    return {"size": args.size, "unet_attention_share": share,
            "self_attention_shape": [1, heads, tokens, head_dim], "dtype": str(dtype), "times": times}


def worker_fidelity(args) -> dict:
    """Cosine similarity of the bf16-autocast input gradient to the fp32 one (same t, noise and latent draw)."""
    import torch

    from artshield.protect import get_method

    model = build_model(args.arch, args.device, compute="fp32")
    images = images_for(model, args.size, batch=2)
    rows = {}
    for name in ("advdm", "sds+"):
        grads = {}
        for label, compute in (("fp32", None), ("bf16", torch.bfloat16)):
            model.compute_dtype = compute
            method = get_method(name)(model, steps=1, **SETTINGS)
            x = images.clone().requires_grad_(True)
            loss = method.objective(x, torch.Generator().manual_seed(1))
            (grads[label],) = torch.autograd.grad(loss.sum(), x)
        cosine = torch.nn.functional.cosine_similarity(grads["fp32"].flatten(1), grads["bf16"].flatten(1), dim=1)
        sign = (grads["fp32"].sign() == grads["bf16"].sign()).float().mean()
        rows[name] = {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()), "sign_agreement": float(sign)}
    return {"size": args.size, "arch": args.arch, "rows": rows}


def worker_overhead(args) -> dict:
    """An AdvDM step through the engine vs the bare hand-written loop, alternating, at the default knobs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_overhead import bare_advdm

    model = build_model(args.arch, args.device)
    images = images_for(model, args.size)
    ours, bare = [], []

    def run_bare(steps: int) -> float:
        sync(model)
        start = time.perf_counter()
        with model.autocast():  # the same precision as the engine's path
            bare_advdm(model, images, 8 / 255, 1 / 255, steps, 0)
        sync(model)
        return time.perf_counter() - start

    step_times(model, "advdm", images, 2), run_bare(1)
    for _ in range(args.repeats):
        ours += step_times(model, "advdm", images, args.steps)
        # The bare loop has no callback: time (steps) - (1) steps, so its first step's set-up cancels.
        bare.append((run_bare(args.steps) - run_bare(1)) / (args.steps - 1))
    return {"size": args.size, "engine": ours, "bare": bare}


def worker_memory(args) -> dict:
    """Peak memory of `args.steps` steps of one method above the loaded model."""
    import resource

    import torch

    model = build_model(args.arch, args.device)
    if args.low_memory:
        model.enable_low_memory()
    images = images_for(model, args.size)
    method_name = args.variants[0]
    step_times(model, method_name, images, 1)  # warm-up (prompt cache, lazy imports)
    gc.collect()
    cuda = model.device.type == "cuda"
    if cuda:
        sync(model)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    malloc_trim()
    rss_before = proc_status_kb("VmRSS")
    reset = reset_peak_rss()
    seconds = step_times(model, method_name, images, args.steps)
    if cuda:
        above = (torch.cuda.max_memory_allocated() - before) / 2**20
        measure = "cuda_max_memory_allocated"
    elif reset and rss_before is not None:
        above, measure = (proc_status_kb("VmHWM") - rss_before) / 1024, "VmHWM"
    else:
        above, measure = float("nan"), "unavailable"
    return {"size": args.size, "method": method_name, "low_memory": bool(args.low_memory), "peak_above_model_mb": above,
            "model_rss_mb": (rss_before or 0) / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "measure": measure, "s_per_step": statistics.median(seconds) if seconds else None}


WORKERS = {"time": worker_time, "components": worker_components, "attention": worker_attention, "fidelity": worker_fidelity,
           "overhead": worker_overhead, "memory": worker_memory}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ============================================================================ the driver
def run_worker(args, kind: str, size: int, *, variants=(), arch: str | None = None, allocator: bool = True,
               low_memory: bool = False, steps: int | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--arch", arch or args.arch, "--device", args.device,
               "--size", str(size), "--repeats", str(args.repeats), "--steps", str(steps or args.steps)]
    if variants:
        command += ["--variants", *variants]
    if low_memory:
        command.append("--low-memory")
    env = dict(os.environ)
    env["ARTSHIELD_MALLOC"] = "keep" if allocator else "default"
    if kind == "memory":  # large blocks through mmap, freed at once: RSS then follows the live tensors
        env["ARTSHIELD_MALLOC"] = "default"
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {kind} {size}: FAILED {tail}", file=sys.stderr)
        return {"error": tail}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["worker_seconds"] = round(time.perf_counter() - started, 1)
    return row


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items() if v}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="sd_scale.py", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd15", help="sd15 (default), sd21, or demo/tiny for quick runs")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds per variant (default 3)")
    parser.add_argument("--steps", type=positive_int, default=2, help="steps per timed run; steps 2.. are timed (default 2)")
    parser.add_argument("--gpu-steps", type=positive_int, default=100, help="on CUDA: steps of the timed AdvDM run (default 100)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--note", help="conditions of the run worth knowing, saved as 'note'")
    parser.add_argument("--output", default=str(RESULTS / "sd_scale.json"))
    parser.add_argument("--update", action="store_true",
                        help="keep the other sections of an existing --output (of the same arch and device), replace these")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=positive_int, help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--low-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from artshield.allocator import keep_freed_memory

        keep_freed_memory()  # unless ARTSHIELD_MALLOC=default (set by the driver per worker)
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")

    import torch

    cuda = args.device.startswith("cuda")
    previous = json.loads(Path(args.output).read_text()) if args.update and Path(args.output).is_file() else {}
    if previous and (previous.get("arch"), previous.get("device")) != (args.arch, args.device):
        parser.error(f"--update: {args.output} measured {previous.get('arch')} on {previous.get('device')}, not {args.arch} on {args.device}")
    result: dict = {**previous,
        "benchmark": "sd_scale", "arch": args.arch, "device": args.device, "torch": torch.__version__,
        "machine": platform.machine(), "cpu": _cpu_name(), "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "repeats": args.repeats, "steps": args.steps,
        "budget": {k: v for k, v in SETTINGS.items() if k != "seed"},
    }
    if not cuda:
        from artshield.models.device import cpu_has_native_bf16

        result["cpu_native_bf16"] = cpu_has_native_bf16()
    started = time.perf_counter()
    core = [m for m in ("advdm", "sds+") if m in args.methods] or args.methods[:1]
    for size in args.sizes:
        block: dict = dict(previous.get(str(size), {}))
        if "knobs" in args.sections and not cuda:
            # Every knob on AdvDM; SDS+ (no UNet backward) under the precision and layout knobs.
            variants = [f"{k}/{m}" for m in core for k in KNOBS if m == core[0] or k in ("fp32", "bf16", "bf16-cl", "bf16-cl2")]
            row = run_worker(args, "time", size, variants=variants)
            block["knobs"] = {**row, "median_s": medians(row.get("times", {}))}
            _print_medians(f"{size}px knobs", block["knobs"]["median_s"])
        if "allocator" in args.sections and not cuda:
            runs = {"default": [], "keep": []}
            for _ in range(2):  # alternate the two subprocesses
                for label in runs:
                    row = run_worker(args, "time", size, variants=[f"default/{core[0]}"], allocator=label == "keep")
                    runs[label].append(row.get("times", {}))
            merged = {label: {k: sum((r.get(k, []) for r in rows), []) for k in rows[0]} for label, rows in runs.items()}
            block["allocator"] = {label: {"times": t, "median_s": medians(t)} for label, t in merged.items()}
            for label in runs:
                _print_medians(f"{size}px malloc {label}", block["allocator"][label]["median_s"])
        if "methods" in args.sections:
            steps = args.gpu_steps if cuda else None
            row = run_worker(args, "time", size, variants=[f"default/{m}" for m in args.methods], steps=steps)
            block["methods"] = {**row, "median_s": medians(row.get("times", {}))}
            if cuda and row.get("times"):
                block["methods"]["run_s"] = {k: sum(v) / len(v) * steps for k, v in row["times"].items()}
            _print_medians(f"{size}px methods", block["methods"]["median_s"])
        if "components" in args.sections:
            row = run_worker(args, "components", size)
            block["components"] = {**row, "median_s": medians(row.get("times", {}))}
            _print_medians(f"{size}px components", block["components"]["median_s"])
        if "attention" in args.sections:
            row = run_worker(args, "attention", size)
            block["attention"] = {**row, "median_s": medians(row.get("times", {}))}
            share = row.get("unet_attention_share")
            print(f"  {size}px attention: {share if share is None else round(100 * share)} % of the UNet; "
                  + ", ".join(f"{k} {v:.3f} s" for k, v in block["attention"]["median_s"].items()), flush=True)
        if "fidelity" in args.sections and not cuda:
            block["fidelity"] = [run_worker(args, "fidelity", size)]
            if size == min(args.sizes):
                block["fidelity"].append(run_worker(args, "fidelity", 128, arch="demo-trained"))
            for row in block["fidelity"]:
                print(f"  {size}px fidelity {row.get('arch')}@{row.get('size')}: {json.dumps(row.get('rows', row))}")
        if "overhead" in args.sections:
            row = run_worker(args, "overhead", size, steps=max(args.steps, 3))
            if row.get("engine") and row.get("bare"):
                row["ratio"] = statistics.median(row["engine"]) / statistics.median(row["bare"])
                print(f"  {size}px engine overhead: {row['ratio']:.3f}")
            block["overhead"] = row
        if "memory" in args.sections:
            rows = []
            for method in args.methods:
                for low in (False, True) if method in core else (False,):
                    row = run_worker(args, "memory", size, variants=[method], low_memory=low)
                    rows.append(row)
                    print(f"  {size}px memory {method}{' --low-memory' * low}: {row.get('peak_above_model_mb', row)} MB "
                          f"above the model ({row.get('model_rss_mb', 0):.0f} MB)")
            block["memory"] = rows
        result[str(size)] = block
    result["seconds"] = round(time.perf_counter() - started, 1) + (previous.get("seconds", 0) if previous else 0)
    if args.note:
        result["note"] = args.note
    from artshield.fileio import write_json_atomic

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output, result, what="benchmark result")
    print(f"saved {args.output} ({result['seconds']:.0f} s)")
    return 0


def _print_medians(label: str, medians_s: dict[str, float]) -> None:
    print(f"  {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians_s.items()), flush=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
