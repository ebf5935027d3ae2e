"""Measure every loader engine side by side in one run, against the model-only bound.

    python -m bench --loaders all --data-dir DIR [--quick] [--profile] [--out bench/results]

Writes bench/results/<date>-<device>.json and .md, three PNG charts, and prints a table. Each engine
runs in its own worker process (python -m bench.measure), so its memory figures are its own.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from pipeline.cli import DefaultsHelpFormatter

ROOT = Path(__file__).resolve().parents[1]
# rows measured per engine (engine options). gpu: its default (chunks of 8,192 on a GPU, one batch on a CPU) beside
# the other path: per-batch on a GPU, chunks of 8,192 on a CPU. dali: its own large batch (the default) beside a
# DALI batch of one training batch. (A chunk or DALI batch of one image rounds up to one training batch.)
VARIANTS = {"dali": {"dali": "", "dali[per-batch]": "pipe_batch=1"}}
GPU_VARIANTS = {"cuda": {"gpu": "", "gpu[per-batch]": "chunk=1"},
                "cpu": {"gpu": "", "gpu[chunks of 8192]": "chunk=8192"}}


def variants(name: str, device: str, step_dtype) -> dict[str, str]:
    """The report rows of engine ``name`` on ``device`` (cpu or cuda), row -> engine options."""
    import torch
    rows = dict(GPU_VARIANTS[device] if name == "gpu" else VARIANTS.get(name, {name: ""}))
    if step_dtype == torch.bfloat16:
        rows.update(BF16_VARIANTS.get(name, {}))
    return rows


# where the step runs in bf16 (a GPU): the gpu engine's batches straight in bf16 as well
BF16_VARIANTS = {"gpu": {"gpu[bf16]": "dtype=bfloat16"}}
# engines that are a peer a user would pick instead, not a reproduction of the policy: the report also gives how
# far from albumentations they land (the statistical parity harness, as figures)
PEERS = ("kornia",)


def choose_device(arg: str) -> str:
    """'cpu' or 'cuda' for a --device of auto/cpu/cuda (pipeline.output.resolve_device: ValueError when cuda is
    asked for and absent)."""
    from pipeline.output import resolve_device
    return resolve_device(arg).type


def device_name(device: str) -> tuple[str, str]:
    """(description, file-name slug)."""
    import torch
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        return f"{name} (CUDA)", re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    return f"CPU: {cpu}, {cores} cores", f"cpu-{cores}core"


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "numpy", "albumentations", "opencv-python-headless", "nvidia-dali-cuda120",
                 "ffcv", "numba"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def run_worker(args: list[str], label: str) -> dict:
    cmd = [sys.executable, "-m", "bench.measure", *args]
    # workers run in the project root; a --model module importable from where bench started stays importable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (os.getcwd(), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{label} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """The command line, behind the project's boundary (pipeline.cli): a failure of the OS is one sentence."""
    from pipeline.cli import run_main
    return run_main(lambda: _main(argv))


def _main(argv=None) -> int:
    from pipeline import available_loaders, known_loaders
    from pipeline.albu_import import add_policy_arguments, policy_for
    from pipeline.format import DataError, read_meta

    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Loader-only throughput of every engine, the model-only bound, end-to-end epoch time and its "
                    "ratio to the bound, the effect of channels-last/AMP/compile, batch-size scaling, peak memory; "
                    "JSON + markdown + PNG report.",
        formatter_class=DefaultsHelpFormatter)
    ap.add_argument("--loaders", default="all", help="'all' or a comma-separated list of engines")
    ap.add_argument("--data-dir", required=True, help="converted data (cifar10-mini for --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="a small version (one repeat, two batch sizes, end-to-end on a few batches, no compile)")
    ap.add_argument("--profile", action="store_true",
                    help="record torch.profiler traces of end-to-end steps (tensorboard --logdir OUT/traces)")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="default 512 (256 with --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="timed loader-only epochs per engine")
    ap.add_argument("--scaling", default=None, metavar="B,B,...",
                    help="batch sizes of the loader-only scaling (default 128,256,512,1024,2048; --quick: 128,512)")
    ap.add_argument("--e2e-batches", type=int, default=None,
                    help="time end-to-end training on this many batches per engine and scale to an epoch "
                         "(default: one full epoch; --quick: 4)")
    ap.add_argument("--model", default=None, metavar="FILE.py:NAME",
                    help="measure your own model instead of c1c2c3c4 (as train.py --model: a file or module and the "
                         "nn.Module class or factory in it)")
    add_policy_arguments(ap)
    args = ap.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 256 if args.quick else 512
    if args.batch_size < 1 or args.repeats < 1:
        ap.error("--batch-size and --repeats must be positive")
    if args.scaling is not None and not all(v.isdigit() and int(v) > 0 for v in args.scaling.split(",")):
        ap.error(f"--scaling {args.scaling!r}: give positive batch sizes separated by commas, e.g. 128,512")

    import torch
    from model import build_model, count_parameters, custom
    try:
        device = choose_device(args.device)
        meta = read_meta(args.data_dir)
        policy, notes = policy_for(meta, args.policy, strict=args.strict_policy)
        if args.model:      # built here once, so a spec that fails is one sentence before any measurement
            net, spec = custom.build(args.model, len(meta["classes"]))
            model_name, model_arg = spec.text, f"{spec.source}:{spec.attr}"     # workers run in the project root
        else:
            net, model_name, model_arg = build_model(), "c1c2c3c4", None
    except (DataError, ValueError, custom.ModelSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    known = list(known_loaders())
    names = known if args.loaders == "all" else [n.strip() for n in args.loaders.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"error: unknown loader {unknown[0]!r}: choose from {', '.join(known)} or 'all'.", file=sys.stderr)
        return 2
    if "torch" not in names and "torch" in available_loaders():
        names.insert(0, "torch")                       # the baseline every ratio needs

    desc, slug = device_name(device)
    repeats = 1 if args.quick else args.repeats
    scaling = args.scaling or ("128,512" if args.quick else "128,256,512,1024,2048")
    out_dir = Path(args.out)
    common = ["--data-dir", str(Path(args.data_dir).resolve()), "--device", device, "--batch-size",
              str(args.batch_size)]
    if args.policy:
        common += ["--policy", str(Path(args.policy).resolve()), *(["--strict-policy"] if args.strict_policy else [])]
    if model_arg:
        common += ["--model", model_arg]
    for note in notes:
        print(f"note: {note}")

    from model.training import precision
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "device": desc, "device_kind": device,
        "versions": versions(), "policy": policy.to_dict(), "policy_file": args.policy,
        "data": {"dir": str(args.data_dir), "train": meta["counts"]["train"], "source": meta["source"]},
        "settings": {"batch_size": args.batch_size, "repeats": repeats, "quick": args.quick, "scaling": scaling,
                     "model": model_name, "parameters": count_parameters(net),
                     "precision": precision(torch.device(device), "auto")[1], "profile": args.profile},
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "engines": {},
    }
    # on a GPU 20 steps of this net last a quarter of a second: two H200 runs of the same configuration read
    # 43,118 and 54,743 img/s, and in one run "auto" and "on" (both bf16 there) 43,118 and 45,641; 200 steps
    # last a few seconds there. On a CPU 20 steps of 512 images already take half a minute per variant.
    steps = 3 if args.quick else (200 if device == "cuda" else 20)
    print(f"[bench] model-only bound ({'quick' if args.quick else 'channels-last x AMP x compile'})", flush=True)
    result["model_bound"] = run_worker([*common, "--engine", "bound", "--bound-steps", str(steps),
                                        "--bound-variants", "quick" if args.quick else "all"], "model-only bound")
    available = set(available_loaders())
    for name in names:
        if name not in available:
            from pipeline import unavailable_reason
            reason = unavailable_reason(name)
            print(f"[bench] {name}: unavailable ({reason})", flush=True)
            result["engines"][name] = {"available": False, "reason": reason}
            continue
        for row, options in variants(name, device, precision(torch.device(device), "auto")[0]).items():
            print(f"[bench] {row}: loader-only x{repeats}, batch scaling {scaling}, end-to-end", flush=True)
            wargs = [*common, "--engine", name, "--repeats", str(repeats), "--scaling", scaling, "--options", options]
            e2e_batches = args.e2e_batches or (4 if args.quick else None)
            if e2e_batches:
                wargs += ["--e2e-batches", str(e2e_batches)]
            if name in PEERS:
                wargs += ["--parity"]
            if args.profile:
                wargs += ["--profile-dir", str(out_dir / "traces" / re.sub(r"[^a-z0-9-]+", "-", row))]
            try:
                result["engines"][row] = {"available": True, "options": options, **run_worker(wargs, row)}
            except RuntimeError as e:
                print(f"[bench] {row}: {e}", flush=True)
                result["engines"][row] = {"available": False, "reason": str(e)}

    from bench.report import console, derive, write
    derive(result)
    stem = f"{dt.date.today().isoformat()}-{slug}" + ("-quick" if args.quick else "")
    paths = write(result, out_dir, stem)
    print(console(result))
    for e_name, e in result["engines"].items():
        if args.profile and e.get("available") and e["end_to_end"].get("top_ops"):
            print(f"top operators, {e_name}: " + ", ".join(f"{o['op']} {o['self_ms']:.1f} ms"
                                                          for o in e["end_to_end"]["top_ops"][:5]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
