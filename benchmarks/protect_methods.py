"""Every protection method side by side: time per step and peak memory, as ratios to AdvDM.

Same model, same image (one, at the model's native resolution unless ``--resolution``), same budget
(L-inf 8/255, step 1/255, one Monte-Carlo sample per step) for every method; each method's other settings
are its defaults. Everything runs in **fresh subprocesses**, one at a time (no competition for the CPU):

* time: a subprocess loads the model, warms up, then alternates ``--repeats`` runs of AdvDM and of the
  method (A B A B ...), ``--steps`` steps each; the ratio of medians is taken under the same machine load;
* memory: another subprocess warms up, then measures one ``--steps``-step run of the method.

``--rounds`` repeats both for every method (methods interleaved); medians over rounds are reported.

Memory figures:

* ``peak_rss_mb``: ``ru_maxrss`` of the whole process (model, Python and torch included);
* ``peak_above_baseline_mb``: the peak resident memory during the measured run above what the process held
  just before it — what the method itself costs. The heap is trimmed first (``malloc_trim``), large
  allocations go through mmap (``MALLOC_MMAP_THRESHOLD_``) and the peak is Linux's ``VmHWM`` after a
  ``clear_refs`` reset (else the ``ru_maxrss`` increase), so that freed memory is neither counted nor
  reused unseen. On CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before.

Ratios are to AdvDM (target for SDS: time ≤ 0.5, i.e. ≥ 2× faster, and memory ≤ 0.5). Times include
everything ``protect()`` does: ASPL's surrogate fine-tuning (3 + 3 steps per 6 PGD steps) is amortised into
its per-step time. DiffusionGuard needs an inpainting model: with ``--model demo`` or an ``arch:`` model the
benchmark builds a random-weight inpainting twin of the same architecture (the cost of a step does not
depend on the weights); otherwise pass ``--inpaint-model``. ``--model arch:demo`` (or ``tiny``) times a
built-in architecture with random weights. With a text-to-image model PhotoGuard's diffusion attack runs in
its img2img mode (4 DDIM steps).

    python benchmarks/protect_methods.py [--model demo|arch:demo|tiny|PATH] [--steps 10] [--repeats 3] [--rounds 3] \
        [--methods advdm sds+ ...] [--note "conditions of the run"] [--output FILE]

Results: printed, and saved to ``benchmarks/results/protect_methods.json`` (``--output``). ``--in-process`` runs
the workers in this process instead of fresh subprocesses: a quick smoke run of the whole script (``--model tiny
--methods advdm sds+ --steps 1 --repeats 1 --rounds 1 --in-process``), not a clean measurement (the output
says ``"in_process": true``).
"""

from __future__ import annotations

import argparse
import gc
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from artshield.cli_support import ArgumentParser, positive_int  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory_probe, beside this script (not a package)
from memory_probe import malloc_trim, proc_status_kb, reset_peak_rss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
INPAINTING_ONLY = {"diffusionguard"}


def _architecture(spec: str) -> str | None:
    """"tiny" -> "tiny", "arch:NAME" -> NAME (a random-weight model of a built-in architecture), else None."""
    return "tiny" if spec == "tiny" else (spec[5:] if spec.startswith("arch:") else None)


def _build_twin(spec: str, inpainting: bool, folder: str):
    """A random-weight model with the architecture of `spec` ("demo", "tiny" or "arch:NAME"), saved in the
    diffusers layout and loaded as usual (the cost of a step does not depend on the weights)."""
    from artshield.models.demo.architecture import build_components, save_components
    from artshield.models.demo.tokenizer import build_tokenizer

    if spec == "demo":
        from artshield.models import load

        tokenizer, architecture = load("demo", device="cpu").tokenizer, "demo"
    else:
        tokenizer = build_tokenizer(["a painting of a circle", "a photo of a house"], vocab_size=600, model_max_length=16)
        architecture = _architecture(spec)
    save_components(build_components(architecture, tokenizer, seed=0, inpainting=inpainting), folder, inpainting=inpainting)
    return folder


def _load(args, inpainting: bool, tmp: str):
    """The benchmark model (or its random-weight twin of the same architecture), and a label for it."""
    from artshield.models import load
    from artshield.models.demo import DEMO_WEIGHTS

    spec = args.model
    if inpainting and args.inpaint_model:
        spec = args.inpaint_model
    elif inpainting and args.model == "demo" and (DEMO_WEIGHTS / "unet_inpaint").is_dir():
        spec = "demo-inpaint"  # the demo model's trained inpainting variant: same architecture as the twin
    elif (inpainting and args.model == "demo") or _architecture(args.model):
        spec = _build_twin(args.model, inpainting, f"{tmp}/{int(inpainting)}")
    label = spec if spec in (args.model, args.inpaint_model, "demo-inpaint") else (
        f"{args.model}: random-weight twin{' (inpainting)' * inpainting}")
    return load(spec, device=args.device, dtype=args.dtype), label


def _timed(method, images, cuda: bool) -> float:
    import torch

    start = time.perf_counter()
    method.protect(images)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(args) -> dict:
    """One subprocess: ``memory`` measures one run of the method; ``time`` alternates AdvDM and the method
    (A B A B ...) in the same process, so the ratio is taken under the same machine load."""
    import torch

    from artshield.protect import AdvDM, get_method

    cls = get_method(args.worker)
    inpainting = cls.name in INPAINTING_ONLY
    with tempfile.TemporaryDirectory() as tmp:
        model, label = _load(args, inpainting, tmp)
        if inpainting and not model.is_inpainting:
            return {"method": cls.name, "skipped": "needs an inpainting model (pass --inpaint-model)"}
        reference = _load(args, False, tmp)[0] if inpainting else model  # AdvDM needs a text-to-image UNet
    resolution = args.resolution or model.native_resolution
    images = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(model.device)
    settings = dict(eps=8 / 255, step_size=1 / 255, norm="linf", samples_per_step=1, seed=0, tile_size=resolution)
    cuda = model.device.type == "cuda"
    cls(model, steps=1, **settings).protect(images)  # warm-up: lazy imports, prompt cache, kernels
    method = cls(model, steps=args.steps, **settings)
    row = {"method": cls.name, "model": label, "resolution": resolution}
    if args.phase == "time":
        advdm = AdvDM(reference, steps=args.steps, **settings)
        advdm.protect(images)
        ours, theirs = [], []
        for _ in range(args.repeats):
            theirs.append(_timed(advdm, images, cuda))
            ours.append(_timed(method, images, cuda))
        row["s_per_step"] = statistics.median(ours) / args.steps
        row["advdm_s_per_step"] = statistics.median(theirs) / args.steps
        row["time_ratio"] = statistics.median(ours) / statistics.median(theirs)
        return row
    # Memory: one run from a trimmed heap (see the module docstring).
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    malloc_trim()
    rss_before = proc_status_kb("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = reset_peak_rss()
    method.protect(images)
    if cuda:
        torch.cuda.synchronize()
        above = (torch.cuda.max_memory_allocated() - before) / 2**20
    elif reset and rss_before is not None:
        above = (proc_status_kb("VmHWM") - rss_before) / 1024
    else:
        above = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) / 1024
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["peak_above_baseline_mb"] = above
    row["memory_measure"] = "cuda_max_memory_allocated" if cuda else ("VmHWM" if reset else "ru_maxrss_increase")
    return row


def _run_worker(args, name: str, phase: str) -> dict:
    if args.in_process:
        try:
            return worker(argparse.Namespace(**{**vars(args), "worker": name, "phase": phase}))
        except Exception as exc:  # reported in the row, as a failed subprocess is
            return {"method": name, "error": f"{type(exc).__name__}: {exc}"}
    command = [sys.executable, __file__, "--worker", name, "--phase", phase, "--model", args.model,
               "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps), "--repeats", str(args.repeats)]
    if args.resolution:
        command += ["--resolution", str(args.resolution)]
    if args.inpaint_model:
        command += ["--inpaint-model", args.inpaint_model]
    env = dict(os.environ)
    if phase == "memory":  # large allocations through mmap, freed at once: RSS then follows live tensors
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"method": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="protect_methods.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo",
                        help="demo, a model spec, or arch:demo / arch:tiny (= tiny): random weights, built-in architecture")
    parser.add_argument("--inpaint-model", help="an inpainting model for DiffusionGuard (other specs than demo/tiny)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--resolution", type=positive_int)
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs of AdvDM and the method, alternating")
    parser.add_argument("--rounds", type=positive_int, default=3, help="times every method is measured (medians reported)")
    parser.add_argument("--methods", nargs="+", help="default: every registered method")
    parser.add_argument("--note", help="conditions of the run worth knowing (e.g. other jobs on the machine), saved as 'note'")
    parser.add_argument("--in-process", action="store_true",
                        help="run the workers in this process (a quick smoke run, not a clean measurement)")
    parser.add_argument("--output", default=str(RESULTS / "protect_methods.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("memory", "time"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    from artshield.protect import METHODS

    names = args.methods or ["advdm", *sorted(n for n in METHODS if n != "advdm")]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.rounds):  # every method once per round, so slow drift in the load hits all alike
        for name in names:
            memory, timing = _run_worker(args, name, "memory"), _run_worker(args, name, "time")
            runs[name].append({**memory, **timing} if "error" not in timing else timing)
            print(f"  {name}: {json.dumps(runs[name][-1])}", file=sys.stderr)
    rows = []
    for name in names:
        good = [r for r in runs[name] if "time_ratio" in r and "peak_above_baseline_mb" in r]
        if not good:
            rows.append(runs[name][-1])
            continue
        row = dict(good[0])
        for key in ("s_per_step", "advdm_s_per_step", "time_ratio", "peak_rss_mb", "peak_above_baseline_mb"):
            row[key] = statistics.median(r[key] for r in good)
        row["s_per_step_rounds"] = [r["s_per_step"] for r in good]
        row["time_ratio_rounds"] = [round(r["time_ratio"], 3) for r in good]
        row["peak_above_baseline_mb_rounds"] = [round(r["peak_above_baseline_mb"], 1) for r in good]
        rows.append(row)
    base = next((r for r in rows if r["method"] == "advdm" and "s_per_step" in r), None)
    print(f"{'method':22s} {'ms/step':>9s} {'time/AdvDM':>10s} {'peak MB':>9s} {'+MB run':>9s} {'mem/AdvDM':>10s}")
    for row in rows:
        if "s_per_step" not in row:
            print(f"{row['method']:22s} {row.get('skipped') or row.get('error')}")
            continue
        if base:
            row["memory_ratio"] = row["peak_above_baseline_mb"] / max(base["peak_above_baseline_mb"], 1e-9)
            row["peak_rss_ratio"] = row["peak_rss_mb"] / base["peak_rss_mb"]
        print(
            f"{row['method']:22s} {row['s_per_step'] * 1000:9.1f} {row.get('time_ratio', float('nan')):10.2f} "
            f"{row['peak_rss_mb']:9.0f} {row['peak_above_baseline_mb']:9.1f} {row.get('memory_ratio', float('nan')):10.2f}"
        )
    import torch

    result = {
        "benchmark": "protect_methods",
        "model": args.model,
        "device": args.device,
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.machine(),
        "steps": args.steps,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "budget": {"norm": "linf", "eps": 8 / 255, "step_size": 1 / 255, "samples_per_step": 1},
        "rows": rows,
        "targets": {"sds": {"time_ratio_max": 0.5, "memory_ratio_max": 0.5}},
    }
    if args.in_process:
        result["in_process"] = True
    if args.note:
        result["note"] = args.note
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    from artshield.fileio import write_json_atomic

    write_json_atomic(args.output, result, what="benchmark result")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
