"""Reports of a benchmark run: ratios from its own figures, targets, markdown, charts, console table."""
from __future__ import annotations

import json
from pathlib import Path

from model.checkpoint import write_text_atomic

GPU_ENGINES = ("gpu", "dali", "ffcv")
TARGET_SPEEDUP = 20.0       # GPU engines vs the albumentations DataLoader, loader-only, on a GPU
TARGET_E2E_RATIO = 1.03     # end-to-end epoch time / model-only bound epoch time
TARGET_EPOCH_S = 1.0        # seconds per 50,000-image epoch on an H100, default model
TARGET_GPU_128 = 1_000_000  # gpu engine, loader-only img/s at train.py's batch of 128, on an H100/H200
TARGET_PEER_RATIO = 5.0     # gpu engine over kornia at batch 128, loader-only, on the same GPU
TARGET_GRAPH_E2E_RATIO = 1.05   # end-to-end epoch with --cuda-graph / the step bound replayed as a graph
TARGET_OPS_RATIO = 0.1      # torch operations per batch of 128: the chunked gpu engine / its per-batch path, / kornia
TARGET_CPU_SPEEDUP = 2.0    # gpu engine over the albumentations DataLoader at batch 128, on a 2-core CPU


def derive(result: dict) -> dict:
    """Ratios and target checks, computed from the figures in ``result`` (and stored in it)."""
    bound_s = result["model_bound"]["default"]["epoch_s"]
    base = result["engines"].get("torch", {})
    base_rate = base["loader_only"]["img_per_s"]["mean"] if base.get("available") else None
    on_gpu = result["device_kind"] == "cuda"
    targets = []
    for name, e in result["engines"].items():
        if not e.get("available"):
            continue
        e["speedup_vs_torch"] = e["loader_only"]["img_per_s"]["mean"] / base_rate if base_rate else None
        e["e2e_ratio_to_bound"] = e["end_to_end"]["epoch_s"]["mean"] / bound_s
        if name.split("[")[0] in GPU_ENGINES and e["speedup_vs_torch"] is not None:
            targets.append({"name": f"{name}: loader-only speed-up over albumentations DataLoader",
                            "value": e["speedup_vs_torch"], "target": f">= {TARGET_SPEEDUP:g}x on a GPU",
                            "met": e["speedup_vs_torch"] >= TARGET_SPEEDUP if on_gpu else None})
        targets.append({"name": f"{name}: end-to-end epoch / model-only bound", "value": e["e2e_ratio_to_bound"],
                        "target": f"<= {TARGET_E2E_RATIO:g}", "met": e["e2e_ratio_to_bound"] <= TARGET_E2E_RATIO
                        if on_gpu else None})
    graph_bound = graph_bound_s(result)
    for name, e in result["engines"].items():
        if e.get("available") and "end_to_end_graph" in e and graph_bound:
            e["e2e_graph_ratio_to_graph_bound"] = e["end_to_end_graph"]["epoch_s"]["mean"] / graph_bound
            targets.append({"name": f"{name} with --cuda-graph: end-to-end epoch / bound as a CUDA graph",
                            "value": e["e2e_graph_ratio_to_graph_bound"], "target": f"<= {TARGET_GRAPH_E2E_RATIO:g}",
                            "met": e["e2e_graph_ratio_to_graph_bound"] <= TARGET_GRAPH_E2E_RATIO if on_gpu else None})
    candidates = [(e["end_to_end"]["epoch_s"]["mean"], n) for n, e in result["engines"].items() if e.get("available")]
    candidates += [(e["end_to_end_graph"]["epoch_s"]["mean"], f"{n} with --cuda-graph")
                   for n, e in result["engines"].items() if e.get("available") and "end_to_end_graph" in e]
    fastest = min(candidates)
    per_50k = fastest[0] * 50_000 / result["data"]["train"]
    targets.append({"name": f"fastest end-to-end epoch ({fastest[1]}), scaled to 50,000 images", "value": per_50k,
                    "target": f"< {TARGET_EPOCH_S:g} s on an H100",
                    "met": per_50k < TARGET_EPOCH_S if on_gpu and "H100" in result["device"] else None})
    # the gpu loader's chunks of 8,192 and DALI's own batch against their per-batch paths, side by side, at the batch
    # sizes training uses (on a CPU the gpu loader's default is per-batch, and its chunks a row of their own)
    cpu_rows = "gpu[chunks of 8192]" in result["engines"]
    for key, large_row, per_batch_row in (("gpu_chunk_speedup", "gpu[chunks of 8192]" if cpu_rows else "gpu",
                                           "gpu" if cpu_rows else "gpu[per-batch]"),
                                          ("dali_pipe_batch_speedup", "dali", "dali[per-batch]")):
        large, per_batch = result["engines"].get(large_row, {}), result["engines"].get(per_batch_row, {})
        if large.get("available") and per_batch.get("available"):
            result[key] = {bs: large["batch_scaling"][bs] / per_batch["batch_scaling"][bs] for bs in ("128", "512")
                           if bs in large["batch_scaling"] and bs in per_batch["batch_scaling"]}
    chunked = result["engines"].get("gpu", {})
    big_gpu = on_gpu and ("H100" in result["device"] or "H200" in result["device"])
    at_128 = chunked["batch_scaling"].get("128") if chunked.get("available") else None
    if at_128 is not None:
        targets.append({"name": "gpu: loader-only at batch 128 (img/s)", "value": at_128,
                        "target": f">= {TARGET_GPU_128:,.0f} on an H100/H200",
                        "met": at_128 >= TARGET_GPU_128 if big_gpu else None})
    dali, torch_ = result["engines"].get("dali", {}), result["engines"].get("torch", {})
    if dali.get("available") and torch_.get("available") and "128" in dali["batch_scaling"] \
            and "128" in torch_["batch_scaling"]:
        ratio = dali["batch_scaling"]["128"] / torch_["batch_scaling"]["128"]
        targets.append({"name": "dali: loader-only at batch 128 / albumentations DataLoader at 128", "value": ratio,
                        "target": f">= {TARGET_SPEEDUP:g}x on a GPU", "met": ratio >= TARGET_SPEEDUP if on_gpu else None})
    # each peer against our chunked gpu loader on the same device, at the batch sizes training uses
    peers = {n: e for n, e in result["engines"].items() if e.get("available") and e.get("parity") is not None}
    if chunked.get("available") and peers:
        result["peer_ratios"] = {n: {bs: chunked["batch_scaling"][bs] / e["batch_scaling"][bs]
                                     for bs in ("128", "512") if bs in chunked["batch_scaling"]
                                     and bs in e["batch_scaling"]} for n, e in peers.items()}
        for n, ratios in result["peer_ratios"].items():
            if "128" in ratios:
                targets.append({"name": f"gpu / {n}: loader-only at batch 128, same device", "value": ratios["128"],
                                "target": f">= {TARGET_PEER_RATIO:g}x on a GPU",
                                "met": ratios["128"] >= TARGET_PEER_RATIO if on_gpu else None})
    targets += _ops_and_cpu_targets(result, on_gpu)
    result["targets"] = targets
    return result


def _ops_per_batch(e: dict) -> float | None:
    return e.get("ops", {}).get("ops_per_batch") if e.get("available") else None


def _ops_and_cpu_targets(result: dict, on_gpu: bool) -> list[dict]:
    """Torch operations per batch of 128 of the chunked gpu engine against its per-batch path and kornia (counts:
    judged on any device), and the gpu engine against the albumentations DataLoader at 128 on a 2-core CPU."""
    engines, targets = result["engines"], []
    cpu_rows = "gpu[chunks of 8192]" in engines
    chunked = _ops_per_batch(engines.get("gpu[chunks of 8192]" if cpu_rows else "gpu", {}))
    for other in ("gpu" if cpu_rows else "gpu[per-batch]", "kornia"):
        theirs = _ops_per_batch(engines.get(other, {}))
        if chunked is not None and theirs:
            targets.append({"name": f"gpu in chunks / {other}: torch operations per batch of 128",
                            "value": chunked / theirs, "target": f"<= {TARGET_OPS_RATIO:g}",
                            "met": chunked / theirs <= TARGET_OPS_RATIO})
    gpu, torch_ = engines.get("gpu", {}), engines.get("torch", {})
    if gpu.get("available") and torch_.get("available") and "128" in gpu["batch_scaling"] \
            and "128" in torch_["batch_scaling"]:
        ratio = gpu["batch_scaling"]["128"] / torch_["batch_scaling"]["128"]
        two_cores = not on_gpu and "2 cores" in result["device"]
        targets.append({"name": "gpu / albumentations DataLoader: loader-only at batch 128, same cores",
                        "value": ratio, "target": f">= {TARGET_CPU_SPEEDUP:g}x on a 2-core CPU",
                        "met": ratio >= TARGET_CPU_SPEEDUP if two_cores else None})
    return targets


def graph_bound_s(result: dict) -> float | None:
    """Epoch seconds of the bound with the step as a CUDA graph at the benchmark's batch size (GPU runs)."""
    bs = result["settings"]["batch_size"]
    return next((v["epoch_s"] for v in result["model_bound"]["variants"]
                 if v.get("graph") and v.get("batch_size", bs) == bs and v["channels_last"]), None)


def _ops_cell(e: dict) -> str:
    ops = e.get("ops")
    if not ops:
        return "–"
    return _fmt(ops["ops_per_batch"], "", 1) + ("*" if ops.get("outside_torch") else "")


def _fmt(v, unit="", digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def markdown(result: dict) -> str:
    r = result
    lines = [f"# cifarflow benchmark: {r['device']}", "",
             f"{r['date']} · torch {r['versions']['torch']} · batch size {r['settings']['batch_size']} · "
             f"{r['data']['train']:,} training images ({r['data']['dir']}) · {r['settings']['precision']}"
             + (" · **quick** run" if r["settings"]["quick"] else ""), "",
             f"Model: {r['settings']['model']} ({r['settings']['parameters']:,} parameters). "
             f"Figures are means over repeats (min–max in brackets); ratios are computed from these figures."
             + (f" Augmentation policy: `{r['policy_file']}` (`--policy`)." if r.get("policy_file") else ""), "",
             "## Loader-only throughput and end-to-end epoch", "",
             "| engine | loader-only img/s | speed-up vs torch | torch ops per batch of 128 | end-to-end epoch s | "
             "end-to-end / bound | peak device MB | peak host RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in r["engines"].items():
        if not e.get("available"):
            lines.append(f"| {name} | unavailable: {e['reason']} | | | | | | |")
            continue
        lo, ee = e["loader_only"]["img_per_s"], e["end_to_end"]["epoch_s"]
        lines.append(f"| {name} | {_fmt(lo['mean'])} ({_fmt(lo['min'])}–{_fmt(lo['max'])}) | "
                     f"{_fmt(e['speedup_vs_torch'], '×', 2)} | {_ops_cell(e)} | {_fmt(ee['mean'], '', 2)} ({_fmt(ee['min'], '', 2)}–"
                     f"{_fmt(ee['max'], '', 2)}) | {_fmt(e['e2e_ratio_to_bound'], '', 3)} | "
                     f"{_fmt(e['peak_device_mem_mb'])} | {_fmt(e['peak_host_rss_mb'])} |")
    outside: dict[str, list[str]] = {}          # why -> the rows it explains
    for n, e in r["engines"].items():
        if e.get("available") and e.get("ops", {}).get("outside_torch"):
            outside.setdefault(e["ops"]["outside_torch"], []).append(f"{n}*")
    lines += ["", "Torch operations per batch: every operation torch dispatched in the loader's process over an epoch "
                  "of batches of 128 (a chunk's work shared by its batches), counted with a TorchDispatchMode; on a GPU "
                  "each is about one kernel launch."
              + "".join(f" {', '.join(rows)}: {why}, so the count is only what reaches torch."
                        for why, rows in outside.items())]
    b = r["model_bound"]["default"]
    lines += ["", f"Model-only bound (one resident batch, forward + backward + step): **{_fmt(b['img_per_s'])} img/s**, "
                  f"{_fmt(b['epoch_s'], ' s', 2)} per epoch of {r['data']['train']:,} images.", ""]
    est = next((e["end_to_end"].get("estimated_from_batches") for e in r["engines"].values() if e.get("available")), None)
    if est:
        lines += [f"End-to-end figures are timed over {est} batches per engine (after a warm-up) and scaled to "
                  f"the epoch; the full-epoch measurement is the default.", ""]
    graphed = [(n, e) for n, e in r["engines"].items() if e.get("available") and "end_to_end_graph" in e]
    if graphed:
        gb = graph_bound_s(r)
        lines += ["## End-to-end with the step as a CUDA graph (`train.py --cuda-graph`)", "",
                  f"The same training, each step replayed as one CUDA graph; the bound as a CUDA graph at this batch "
                  f"size: {_fmt(gb, ' s', 2)} per epoch.", "",
                  "| engine | end-to-end epoch s | eager end-to-end / graph | end-to-end / graph bound |",
                  "| --- | --- | --- | --- |"]
        for n, e in graphed:
            g, ee = e["end_to_end_graph"]["epoch_s"], e["end_to_end"]["epoch_s"]["mean"]
            lines.append(f"| {n} | {_fmt(g['mean'], '', 2)} ({_fmt(g['min'], '', 2)}–{_fmt(g['max'], '', 2)}) | "
                         f"{_fmt(ee / g['mean'], '×', 2)} | {_fmt(e.get('e2e_graph_ratio_to_graph_bound'), '', 3)} |")
        lines.append("")
    lines += ["## Model-only bound: batch size, channels-last, AMP, torch.compile, CUDA graph", "",
              "| batch | channels-last | AMP | compile | CUDA graph | img/s | epoch s | precision |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in r["model_bound"]["variants"]:      # older reports ran every variant at the one batch size
        bs = v.get("batch_size", r["settings"]["batch_size"])
        lines.append(f"| {bs} | {'on' if v['channels_last'] else 'off'} | {v['amp']} | "
                     f"{'on' if v['compile'] else 'off'} | {'on' if v.get('graph') else 'off'} | "
                     f"{_fmt(v['img_per_s'])} | "
                     f"{_fmt(v['epoch_s'], '', 2)} | {v['precision'].split(':')[0].split(' (')[0]} |")
    sizes = sorted({int(s) for e in r["engines"].values() if e.get("available") for s in e["batch_scaling"]})
    lines += ["", "## Batch-size scaling, loader-only img/s", "",
              "| engine | " + " | ".join(str(s) for s in sizes) + " |", "| --- |" + " --- |" * len(sizes)]
    for name, e in r["engines"].items():
        if e.get("available"):
            lines.append(f"| {name} | " + " | ".join(_fmt(e["batch_scaling"].get(str(s))) for s in sizes) + " |")
    for key, what in (("gpu_chunk_speedup", "gpu engine, chunked augmentation"),
                      ("dali_pipe_batch_speedup", "dali engine, DALI at its own large batch")):
        if r.get(key):
            lines += ["", f"{what} against the per-batch path (loader-only, side by side): "
                      + ", ".join(f"batch {bs}: **{v:.2f}x**" for bs, v in r[key].items())]
    for n, ratios in r.get("peer_ratios", {}).items():
        lines += ["", f"gpu engine (its default) against the peer {n} (loader-only, side by side): "
                  + ", ".join(f"batch {bs}: **{v:.2f}x**" for bs, v in ratios.items())]
    peers = [(n, e) for n, e in r["engines"].items() if e.get("available") and e.get("parity") is not None]
    if peers:
        lines += ["", "## How far a peer lands from the albumentations policy", "",
                  "The statistical parity harness (`pipeline.parity`) on each peer's epoch, against albumentations "
                  "2.x: figures, not a pass/fail (a peer is not built to reproduce the policy).", "",
                  "| peer | check | within the harness's tolerance | figures |", "| --- | --- | --- | --- |"]
        for n, e in peers:
            for c in e["parity"]:
                lines.append(f"| {n} | {c['name']} | {'yes' if c['within_tolerance'] else 'no'} | {c['figures']} |")
    lines += ["", "## Targets", "", "| what | value | target | met |", "| --- | --- | --- | --- |"]
    for t in r["targets"]:
        met = "n/a here" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['name']} | {_fmt(t['value'], '', 3)} | {t['target']} | {met} |")
    tops = [(n, e["end_to_end"]["top_ops"]) for n, e in r["engines"].items() if e.get("available") and e["end_to_end"].get("top_ops")]
    if tops:
        lines += ["", "## Top operators (profiler, end-to-end steps)", ""]
        for n, ops in tops:
            lines.append(f"**{n}**: " + ", ".join(f"{o['op']} {o['self_ms']:.1f} ms" for o in ops[:6]))
            lines.append("")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
              f"Reproduce: `{r['command']}`", ""]
    return "\n".join(lines)


def console(result: dict) -> str:
    w = max(12, *(len(n) + 2 for n in result["engines"]))
    rows = [f"{'engine':<{w}}{'loader img/s':>14}{'x torch':>9}{'ops/batch':>11}{'e2e epoch s':>13}{'e2e/bound':>11}"]
    for name, e in result["engines"].items():
        if not e.get("available"):
            rows.append(f"{name:<{w}}  unavailable: {e['reason']}")
            continue
        rows.append(f"{name:<{w}}{e['loader_only']['img_per_s']['mean']:>14,.0f}"
                    f"{_fmt(e['speedup_vs_torch'], '', 2):>9}{_ops_cell(e):>11}{e['end_to_end']['epoch_s']['mean']:>13.2f}"
                    f"{e['e2e_ratio_to_bound']:>11.3f}")
    b = result["model_bound"]["default"]
    rows.append(f"{'bound':<{w}}{b['img_per_s']:>14,.0f}{'':>9}{'':>11}{b['epoch_s']:>13.2f}{1.0:>11.3f}")
    return "\n".join(rows)


def charts(result: dict, stem: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    avail = [(n, e) for n, e in result["engines"].items() if e.get("available")]
    names = [n for n, _ in avail]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 3.6))
    means = [e["loader_only"]["img_per_s"]["mean"] for _, e in avail]
    err = [[m - e["loader_only"]["img_per_s"]["min"] for m, (_, e) in zip(means, avail)],
           [e["loader_only"]["img_per_s"]["max"] - m for m, (_, e) in zip(means, avail)]]
    ax.bar(names, means, yerr=err, color="#4c72b0", capsize=4)
    ax.axhline(result["model_bound"]["default"]["img_per_s"], color="#c44e52", ls="--", label="model-only bound")
    ax.set_ylabel("images / s"), ax.set_title(f"loader-only throughput ({result['device']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "-throughput.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(names, [e["end_to_end"]["epoch_s"]["mean"] for _, e in avail], color="#55a868", label="end-to-end")
    ax.axhline(result["model_bound"]["default"]["epoch_s"], color="#c44e52", ls="--", label="model-only bound")
    ax.set_ylabel(f"seconds per epoch ({result['data']['train']:,} images)")
    ax.set_title("end-to-end epoch vs the model-only bound", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "-e2e.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for n, e in avail:
        sizes = sorted(int(s) for s in e["batch_scaling"])
        ax.plot(sizes, [e["batch_scaling"][str(s)] for s in sizes], "o-", label=n)
    ax.set_xscale("log", base=2), ax.set_yscale("log")
    ax.set_xlabel("batch size"), ax.set_ylabel("loader-only images / s"), ax.legend(fontsize=8)
    ax.set_title("batch-size scaling", fontsize=9)
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "-batch-scaling.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write(result: dict, out_dir: Path, stem_name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / stem_name
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(md_path, markdown(result))
    return [json_path, md_path, *charts(result, stem)]
