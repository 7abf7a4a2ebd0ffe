"""Authentication's two models: a LoRA toggled on one set of weights vs a second loaded model, side by side.

A CGI-DM audit of one image (the contrast recovery and the base-only recovery, ``--steps`` steps each, as
:meth:`artshield.authenticate.Auditor.audit` runs them) with the same base model and the same suspect weights,
held three ways:

* ``lora-toggle``: ``ModelPair.load(base, lora=PATH)`` — one VAE, one text encoder, one UNet; the suspect is the
  base's UNet with the LoRA adapter switched on (what ``artshield authenticate --lora`` does);
* ``two-models``: ``ModelPair.load(base, suspect=FOLDER)`` with the LoRA merged into a full copy saved as a
  diffusers folder (a DreamBooth-like suspect): a second UNet; the VAE and text encoder the fine-tune left
  untouched are shared after loading (what ``--suspect`` does);
* ``two-pipelines``: ``ModelPair(load(base), load(FOLDER))`` — two complete models, nothing shared (the
  reference CGI-DM code's two pipelines).

Each variant runs in a **fresh subprocess** (load, one warm-up audit, ``--repeats`` timed audits), the variants
alternating (A B C A B C ...) for ``--rounds`` rounds so that drift of the machine hits all alike; medians over
rounds. Time: wall seconds and the process's CPU seconds per audited image (with one thread the CPU time
hardly depends on other jobs on the machine, the wall time does). Memory: the process's peak resident set (``VmHWM``, else ``ru_maxrss``; loading included) and that
peak above the resident set before the models were loaded (after importing torch, diffusers, transformers and
peft); on CUDA, ``torch.cuda.max_memory_allocated``.
``weights_mb`` counts every distinct parameter and buffer the pair holds. Ratios are to ``lora-toggle``.

    python benchmarks/authenticate_pair.py [--model demo|PATH] [--resolution 128] [--steps 10] [--repeats 3] \
        [--rounds 3] [--lora PATH] [--note "conditions of the run"] [--output FILE]

Without ``--lora`` a rank-``--rank`` LoRA is made with the project's trainer (a few steps on noise images: the
cost of an audit does not depend on what the LoRA learned). Results are printed and saved to
``benchmarks/results/authenticate_pair.json`` (``--output``). ``--in-process`` runs the workers in this process
(a quick smoke run, not a clean measurement: the output says ``"in_process": true``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from artshield.cli_support import ArgumentParser, non_negative_int, positive_int  # noqa: E402
from artshield.fileio import write_json_atomic  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory_probe, beside this script (not a package)
from memory_probe import proc_status_kb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("lora-toggle", "two-models", "two-pipelines")
PROMPT = "a painting in velmora style"


def _peak_kb() -> tuple[int, str]:
    peak = proc_status_kb("VmHWM")
    if peak is not None:
        return peak, "VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _weights_mb(pair) -> float:
    """Distinct parameter and buffer bytes of every module the pair holds (shared tensors counted once)."""
    seen, total = set(), 0
    for model in {id(pair.base): pair.base, id(pair.suspect): pair.suspect}.values():
        for name in ("vae", "text_encoder", "unet"):
            module = getattr(model, name, None)
            if module is None:
                continue
            for tensor in [*module.parameters(), *module.buffers()]:
                key = (tensor.data_ptr(), tensor.numel())
                if key not in seen:
                    seen.add(key)
                    total += tensor.numel() * tensor.element_size()
    return total / 2**20


def _import_loaders() -> None:
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    from artshield.authenticate import pair  # noqa: F401
    from artshield.models import load  # noqa: F401


def load_pair(variant: str, model: str, lora: str, merged: str, device: str | None, dtype: str | None):
    from artshield.authenticate.pair import ModelPair
    from artshield.models import load

    if variant == "lora-toggle":
        return ModelPair.load(model, lora=lora, prompt=PROMPT, device=device, dtype=dtype)
    if variant == "two-models":
        return ModelPair.load(model, suspect=merged, prompt=PROMPT, device=device, dtype=dtype)
    if variant == "two-pipelines":
        base = load(model, device=device, dtype=dtype)
        return ModelPair(base, load(merged, device=base.device, dtype=base.dtype), prompt=PROMPT)
    raise ValueError(f"unknown variant {variant!r}")


def worker(variant: str, model: str, lora: str, merged: str, *, resolution: int | None, steps: int, repeats: int,
           device: str | None, dtype: str | None) -> dict:  # fmt: skip
    """Load `variant`, audit one image once to warm up, then `repeats` timed audits: one result row."""
    from artshield.authenticate.cgidm import CGIDM, CGIDMConfig

    _import_loaders()  # so that the start below excludes the libraries and measures models and activations
    start_kb = proc_status_kb("VmRSS")
    cuda = torch.cuda.is_available() and (device or "auto") != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    pair = load_pair(variant, model, lora, merged, device, dtype)
    load_s = time.perf_counter() - started
    size = resolution or pair.base.native_resolution
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    method = CGIDM(pair, CGIDMConfig(steps=steps, seed=0))
    method.recover(image)  # warm-up: allocator, kernels, prompt embeddings
    times, cpu_times = [], []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        method.recover(image)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak_kb, measure = _peak_kb()
    row = {
        "variant": variant,
        "resolution": size,
        "s_per_image": statistics.median(times),
        "cpu_s_per_image": statistics.median(cpu_times),
        "load_s": load_s,
        "peak_rss_mb": peak_kb / 1024,
        "peak_above_start_mb": (peak_kb - start_kb) / 1024 if start_kb is not None else float("nan"),
        "weights_mb": _weights_mb(pair),
        "memory_measure": measure,
        "device": str(pair.base.device),
        "dtype": str(pair.base.dtype).removeprefix("torch."),
    }
    if cuda:
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def make_suspect(model: str, folder: Path, rank: int, device: str | None, dtype: str | None) -> tuple[str, str]:
    """A LoRA made by the project's trainer (2 steps on noise images) and the same LoRA merged into a full copy
    saved as a diffusers folder: the two forms of one suspect."""
    from PIL import Image
    from safetensors.torch import save_file

    from artshield.finetune import LocalTrainer
    from artshield.models import load

    data = folder / "images"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = load(model, device=device, dtype=dtype)
    size = base.native_resolution
    paths = []
    for i in range(2):
        path = data / f"noise_{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    update = LocalTrainer(base, rank=rank, learning_rate=1e-3, resolution=size, batch_size=2, seed=0).train_steps(paths, 2, prompt=PROMPT)
    lora = folder / "lora" / "pytorch_lora_weights.safetensors"
    lora.parent.mkdir()
    save_file({k: v.detach().float().cpu().contiguous() for k, v in update.state_dict.items()}, str(lora))
    merged = load(model, device=device, dtype=dtype).with_lora(lora)
    merged.unet.fuse_lora(lora_scale=1.0)
    merged.unet.unload_lora()
    merged.pipeline().save_pretrained(str(folder / "merged"), safe_serialization=True)
    return str(lora), str(folder / "merged")


def _run_worker(args, variant: str, lora: str, merged: str) -> dict:
    options = dict(resolution=args.resolution, steps=args.steps, repeats=args.repeats, device=args.device, dtype=args.dtype)
    if args.in_process:
        return worker(variant, args.model, lora, merged, **options)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--lora", lora, "--merged", merged,
               "--model", args.model, "--steps", str(args.steps), "--repeats", str(args.repeats)]  # fmt: skip
    for flag, value in (("--resolution", args.resolution), ("--device", args.device), ("--dtype", args.dtype)):
        if value is not None:
            command += [flag, str(value)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {variant} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="authenticate_pair.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--resolution", type=positive_int, default=None, help="image side (default: the model's native)")
    parser.add_argument("--steps", type=non_negative_int, default=10, help="CGI-DM steps per recovery (default 10)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed audits per subprocess (default 3)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="A B C rounds (default 3)")
    parser.add_argument("--rank", type=positive_int, default=16, help="rank of the LoRA made without --lora")
    parser.add_argument("--lora", help="the suspect LoRA (default: made here); with --merged: its merged folder")
    parser.add_argument("--merged", help=argparse_hidden())
    parser.add_argument("--worker", choices=VARIANTS, help=argparse_hidden())
    parser.add_argument("--in-process", action="store_true", help="run the workers in this process (smoke runs)")
    parser.add_argument("--note", help="conditions of the run worth knowing, saved as 'note'")
    parser.add_argument("--output", default=str(RESULTS / "authenticate_pair.json"))
    args = parser.parse_args(argv)
    if args.worker:
        row = worker(args.worker, args.model, args.lora, args.merged, resolution=args.resolution, steps=args.steps,
                     repeats=args.repeats, device=args.device, dtype=args.dtype)  # fmt: skip
        print(json.dumps(row))
        return 0
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="authenticate_pair-")))
        if args.lora and args.merged:
            lora, merged = args.lora, args.merged
        else:
            made_lora, merged = make_suspect(args.model, folder, args.rank, args.device, args.dtype)
            if args.lora:  # a given LoRA: merge that one
                from artshield.models import load

                model = load(args.model, device=args.device, dtype=args.dtype).with_lora(args.lora)
                model.unet.fuse_lora(lora_scale=1.0)
                model.unet.unload_lora()
                merged = str(folder / "merged_given")
                model.pipeline().save_pretrained(merged, safe_serialization=True)
            lora = args.lora or made_lora
        rounds: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for variant in VARIANTS:
                row = _run_worker(args, variant, lora, merged)
                rounds[variant].append(row)
                print(f"round {r + 1}: {variant:14s} {row['s_per_image']:7.3f} s/image  peak RSS {row['peak_rss_mb']:7.1f} MiB  "
                      f"(+{row['peak_above_start_mb']:.1f})  weights {row['weights_mb']:.1f} MiB", flush=True)  # fmt: skip
    rows = []
    for variant in VARIANTS:
        runs = rounds[variant]
        row = {key: statistics.median(r[key] for r in runs) for key in ("s_per_image", "cpu_s_per_image", "load_s", "peak_rss_mb", "peak_above_start_mb")}
        row.update(variant=variant, weights_mb=runs[0]["weights_mb"], memory_measure=runs[0]["memory_measure"],
                   s_per_image_rounds=[r["s_per_image"] for r in runs], peak_rss_mb_rounds=[r["peak_rss_mb"] for r in runs])  # fmt: skip
        if "cuda_peak_mb" in runs[0]:
            row["cuda_peak_mb"] = statistics.median(r["cuda_peak_mb"] for r in runs)
        rows.append(row)
    reference = rows[0]
    for row in rows:
        row["time_ratio"] = row["s_per_image"] / reference["s_per_image"]
        row["cpu_time_ratio"] = row["cpu_s_per_image"] / reference["cpu_s_per_image"]
        memory = "cuda_peak_mb" if "cuda_peak_mb" in row else "peak_rss_mb"
        row["memory_ratio"] = row[memory] / reference[memory]
        row["above_start_ratio"] = row["peak_above_start_mb"] / reference["peak_above_start_mb"]
        row["weights_ratio"] = row["weights_mb"] / reference["weights_mb"]
        print(f"{row['variant']:14s} {row['s_per_image']:7.3f} s/image  time x{row['time_ratio']:.2f}  CPU time x{row['cpu_time_ratio']:.2f}  "
              f"memory x{row['memory_ratio']:.2f} (above start x{row['above_start_ratio']:.2f})  weights x{row['weights_ratio']:.2f}")
    first = rounds[VARIANTS[0]][0]
    result = {
        "benchmark": "authenticate_pair",
        "model": args.model,
        "device": first["device"],
        "dtype": first["dtype"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": f"{platform.machine()} {platform.system()}",
        "resolution": first["resolution"],
        "steps": args.steps,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "variants": list(VARIANTS),
        "in_process": bool(args.in_process),
        "rows": rows,
    }
    if args.note:
        result["note"] = args.note
    write_json_atomic(Path(args.output), result)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
