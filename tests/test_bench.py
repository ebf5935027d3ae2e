"""bench --quick: every field, ratios from the figures in the same file, unavailable engines reported."""
import json
import math

import pytest
import torch

import pipeline
from pipeline.format import read_meta


def gpu_variants(report) -> dict:
    """The gpu engine's report rows on the report's device, as bench chooses them."""
    from bench.__main__ import variants
    from model.training import precision
    return variants("gpu", report["device_kind"], precision(torch.device(report["device_kind"]), "auto")[0])


@pytest.fixture(scope="module")
def quick_report(mini_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setitem(pipeline._ENGINES, "fake", pipeline._Engine("pipeline.engines.fake", ("surely_missing_mod",),
                                                           "pip install fake-engine", "a missing engine"))
    try:
        from bench.__main__ import main
        assert main(["--loaders", "gpu,kornia,fake", "--data-dir", str(mini_dir), "--quick", "--out", str(out)]) == 0
    finally:
        mp.undo()
    (path,) = out.glob("*.json")
    return json.loads(path.read_text()), out


@pytest.mark.slow
def test_every_field(quick_report):
    r, out = quick_report
    for key in ("date", "device", "device_kind", "versions", "policy", "data", "settings", "command",
                "model_bound", "engines", "targets"):
        assert key in r, key
    assert r["settings"]["quick"] and r["versions"]["torch"]
    # torch: the baseline, always measured; gpu in two rows (its default, and chunks of 8,192 on a CPU or the
    # per-batch path on a GPU), and in bf16 where the step runs in bf16
    gpu_rows = set(gpu_variants(r))
    assert set(r["engines"]) == {"torch", *gpu_rows, "kornia", "fake"} and len(gpu_rows) >= 2
    for name in ("torch", *gpu_rows, "kornia"):
        e = r["engines"][name]
        assert e["available"]
        for key in ("loader_only", "batch_scaling", "end_to_end", "speedup_vs_torch", "e2e_ratio_to_bound",
                    "peak_host_rss_mb", "peak_device_mem_mb", "ops"):
            assert key in e, (name, key)
        assert e["ops"]["batch_size"] == 128 and e["ops"]["ops_per_batch"] > 0
        assert e["loader_only"]["img_per_s"]["mean"] > 0 and len(e["loader_only"]["img_per_s"]["values"]) >= 1
        assert set(e["batch_scaling"]) == {"128", "512"}
        assert e["end_to_end"]["epoch_s"]["mean"] > 0 and e["peak_host_rss_mb"] > 100
    b = r["model_bound"]
    assert b["default"]["img_per_s"] > 0 and {(v["channels_last"], v["compile"]) for v in b["variants"]} >= {(True, False), (False, False)}
    for suffix in (".md", "-throughput.png", "-e2e.png", "-batch-scaling.png"):
        assert list(out.glob(f"*{suffix}")), suffix


@pytest.mark.slow
def test_ratios_come_from_the_figures_in_the_file(quick_report):
    r, _ = quick_report
    base = r["engines"]["torch"]["loader_only"]["img_per_s"]["mean"]
    bound = r["model_bound"]["default"]["epoch_s"]
    assert math.isclose(r["model_bound"]["default"]["epoch_s"], r["data"]["train"] / r["model_bound"]["default"]["img_per_s"])
    for name in ("torch", *gpu_variants(r)):
        e = r["engines"][name]
        assert math.isclose(e["speedup_vs_torch"], e["loader_only"]["img_per_s"]["mean"] / base)
        assert math.isclose(e["e2e_ratio_to_bound"], e["end_to_end"]["epoch_s"]["mean"] / bound)
    gpu_target = next(t for t in r["targets"] if t["name"].startswith("gpu: loader-only"))
    assert math.isclose(gpu_target["value"], r["engines"]["gpu"]["speedup_vs_torch"])
    default, peer = (r["engines"][n]["batch_scaling"] for n in ("gpu", "kornia"))
    for bs, v in r["peer_ratios"]["kornia"].items():
        assert math.isclose(v, default[bs] / peer[bs])
    on_cpu = r["device_kind"] == "cpu"          # the default is per-batch there; chunks of 8,192 are a row
    chunked, per_batch = (r["engines"][n]["batch_scaling"] for n in (
        ("gpu[chunks of 8192]", "gpu") if on_cpu else ("gpu", "gpu[per-batch]")))
    assert set(r["gpu_chunk_speedup"]) == {"128", "512"}
    for bs, v in r["gpu_chunk_speedup"].items():
        assert math.isclose(v, chunked[bs] / per_batch[bs])
    ops = {t["name"]: t for t in r["targets"] if "torch operations per batch" in t["name"]}
    assert set(ops) == {f"gpu in chunks / {n}: torch operations per batch of 128"
                        for n in ("gpu" if on_cpu else "gpu[per-batch]", "kornia")}
    chunked_ops = r["engines"]["gpu[chunks of 8192]" if on_cpu else "gpu"]["ops"]["ops_per_batch"]
    for t in ops.values():
        other = t["name"].split(" / ")[1].split(":")[0]
        assert math.isclose(t["value"], chunked_ops / r["engines"][other]["ops"]["ops_per_batch"])
        assert t["met"] == (t["value"] <= 0.1)                  # a count: judged on any device
    cpu = next(t for t in r["targets"] if t["name"].startswith("gpu / albumentations DataLoader"))
    assert math.isclose(cpu["value"], default["128"] / r["engines"]["torch"]["batch_scaling"]["128"])
    if r["device_kind"] == "cpu":      # GPU targets are not judged on a CPU
        assert all(t["met"] is None for t in r["targets"] if t not in ops.values() and t is not cpu)


@pytest.mark.slow
def test_a_peer_is_reported_with_how_far_it_lands_from_albumentations(quick_report):
    r, out = quick_report
    checks = {c["name"]: c for c in r["engines"]["kornia"]["parity"]}
    # the peer's own epoch against albumentations' (our sampler's checks say nothing of a peer and are left out)
    assert checks["share of images unchanged"]["within_tolerance"] and "mean augmented image" in checks
    assert not any(name.endswith(" rate") or "(KS)" in name and "per-image" not in name for name in checks)
    assert "parity" not in r["engines"]["gpu"]              # our own engines are judged by the parity tests
    md = next(out.glob("*.md")).read_text()
    assert "## How far a peer lands from the albumentations policy" in md and "| kornia | mean augmented image |" in md
    assert "against the peer kornia" in md


@pytest.mark.slow
def test_a_missing_engine_is_reported_not_fatal(quick_report):
    r, out = quick_report
    fake = r["engines"]["fake"]
    assert fake["available"] is False and "surely_missing_mod" in fake["reason"] and "pip install" in fake["reason"]
    md = next(out.glob("*.md")).read_text()
    assert "| fake | unavailable" in md


def test_the_timed_end_to_end_epochs_run_without_the_profiler(mini_dir, tmp_path, monkeypatch):
    """--profile records its trace in steps of its own, after the timed epochs: a profiled epoch is slower
    (on an H200 the profiled end-to-end epoch read 5.7x the model-only bound)."""
    import torch
    from bench import measure
    events = []
    real_sync, real_profiler = measure.sync, measure._profiler
    monkeypatch.setattr(measure, "sync", lambda device: (events.append("sync"), real_sync(device)))
    monkeypatch.setattr(measure, "_profiler", lambda d, dev: (events.append("profiler"), real_profiler(d, dev))[1])
    r = measure.end_to_end("gpu", mini_dir, 128, torch.device("cpu"), "off", epochs=2, max_batches=2,
                           train_size=read_meta(mini_dir)["counts"]["train"],
                           profile_dir=tmp_path / "traces")
    assert events[:5] == ["sync"] * 4 + ["profiler"], events       # two timed epochs, each between two syncs
    assert r["top_ops"] and list((tmp_path / "traces").rglob("*.json")), "no trace written"
    assert len(r["img_per_s"]["values"]) == 2 and r["measured_images"] == 256


@pytest.mark.parametrize("graph", [False, True])
def test_the_warm_up_covers_the_shape_of_a_full_epochs_last_batch(mini_dir, monkeypatch, graph):
    """A timed full epoch ends in a smaller batch (5,085 % 128 = 93 on cifar10-mini): a new shape that cuDNN
    in benchmark mode times its kernels for, seconds on a GPU; the warm-up steps on that shape once, so the
    timed epoch does not pay it. With --e2e-batches the timed steps never reach it and no such step runs.
    With the step as a CUDA graph, four times: three eager steps and the recording, as for the full size."""
    import torch
    import model.training
    from bench import measure
    events = []

    class Recorder:         # stands in for the optimizer step: records the batch sizes it is given
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, x, y):
            events.append(len(y))

    monkeypatch.setattr(model.training, "GraphStepper" if graph else "Stepper", Recorder)
    monkeypatch.setattr(measure, "sync", lambda device: events.append("sync"))
    last = read_meta(mini_dir)["counts"]["train"] % 128
    assert last, "cifar10-mini should not split into whole batches of 128"
    measure.end_to_end("gpu", mini_dir, 128, torch.device("cpu"), "off", epochs=1, max_batches=None,
                       train_size=read_meta(mini_dir)["counts"]["train"], graph=graph)
    warm_up = events[:events.index("sync")]
    assert warm_up == [128] * 5 + [last] * (4 if graph else 1), warm_up
    assert events[-2] == last                                      # and once more at the end of the timed epoch
    events.clear()
    measure.end_to_end("gpu", mini_dir, 128, torch.device("cpu"), "off", epochs=1, max_batches=3,
                       train_size=read_meta(mini_dir)["counts"]["train"], graph=graph)
    assert events == [128] * 5 + ["sync"] + [128] * 3 + ["sync"], events


def test_the_full_bound_is_also_measured_at_the_training_batch_size(mini_dir, monkeypatch, capsys):
    """bench measures the bound at its batch size (512) and, eager and compiled, at train.py's 128, where a
    net this small is more likely bound by kernel launches; each variant says its batch size, and the report
    has a batch column. Measured with a stand-in for the timing (torch.compile on this CPU takes minutes)."""
    from bench import measure
    from bench.report import markdown
    calls = []

    def fake_bound(batch_size, device, amp, channels_last, compile, steps, warmup, train_size, graph=False):
        assert not graph                                                # no CUDA graph on a CPU
        calls.append((batch_size, channels_last, amp, compile))
        return {"batch_size": batch_size, "channels_last": channels_last, "amp": amp, "precision": "fp32",
                "compile": compile, "img_per_s": 1000.0 * batch_size, "epoch_s": train_size / (1000.0 * batch_size)}

    monkeypatch.setattr(measure, "model_bound", fake_bound)
    assert measure.main(["--engine", "bound", "--data-dir", str(mini_dir), "--batch-size", "512"]) == 0
    bound = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert calls[0] == (512, True, "auto", False) and bound["default"]["batch_size"] == 512
    assert calls[-2:] == [(128, True, "auto", False), (128, True, "auto", True)] and len(calls) == 8
    calls.clear()
    assert measure.main(["--engine", "bound", "--data-dir", str(mini_dir), "--batch-size", "128"]) == 0
    assert len(calls) == 6 and {c[0] for c in calls} == {128}        # no variant measured twice
    capsys.readouterr()
    report = {"date": "d", "device": "cpu", "device_kind": "cpu", "data": {"dir": "x", "train": 50000},
              "settings": {"batch_size": 512, "precision": "fp32", "quick": False, "model": "c1c2c3c4",
                           "parameters": 194762},
              "engines": {}, "targets": [], "versions": {"torch": "2"}, "command": "python -m bench",
              "model_bound": bound}
    md = markdown(report)
    assert "| batch | channels-last |" in md and "| 128 | on | auto | on |" in md and "| 512 | off | auto | off |" in md
    del report["model_bound"]["variants"][0]["batch_size"]             # a report from before the column
    assert "| 512 | on | auto | off |" in markdown(report)


def test_the_cuda_graph_bound_is_listed_on_a_gpu_only():
    """On a GPU (not in fp16, whose GradScaler reads back) the bound is also measured with the whole step
    replayed as one CUDA graph, at 512 and at train.py's 128; on a CPU, or in the quick set, it is not."""
    from bench.measure import bound_configs
    gpu = bound_configs(512, "auto", "all", graphs=True)
    assert gpu[0] == (512, True, "auto", False, False)
    assert [c for c in gpu if c[4]] == [(512, True, "auto", False, True), (128, True, "auto", False, True)]
    assert not any(c[4] for c in bound_configs(512, "auto", "all", graphs=False))
    assert not any(c[4] for c in bound_configs(512, "auto", "quick", graphs=True))
    assert [c for c in bound_configs(128, "auto", "all", graphs=True) if c[4]] == [(128, True, "auto", False, True)]


def test_the_report_shows_end_to_end_with_the_step_as_a_cuda_graph():
    """A GPU run also times end-to-end training with --cuda-graph: the report gives its epoch, its speed-up over
    the eager one and its ratio to the bound measured as a CUDA graph at the same batch size, judges that ratio
    against the 1.03 target, and counts it for the fastest epoch. Figures made up; derive() on a GPU result."""
    from bench.report import derive, markdown
    def epoch(s):
        return {"epoch_s": {"mean": s, "min": s, "max": s, "values": [s]}, "img_per_s": {"values": [50000 / s]}}
    engine = {"available": True, "loader_only": {"img_per_s": {"mean": 1e5, "min": 1e5, "max": 1e5}},
              "end_to_end": epoch(1.8), "end_to_end_graph": epoch(0.6), "batch_scaling": {"512": 1e5},
              "peak_device_mem_mb": 1.0, "peak_host_rss_mb": 1.0}
    variants = [{"batch_size": 512, "channels_last": True, "amp": "auto", "compile": False, "graph": False,
                 "img_per_s": 50000 / 1.05, "epoch_s": 1.05, "precision": "bf16 autocast on CUDA"},
                {"batch_size": 512, "channels_last": True, "amp": "auto", "compile": False, "graph": True,
                 "img_per_s": 1e5, "epoch_s": 0.5, "precision": "bf16 autocast on CUDA"}]
    r = {"date": "d", "device": "NVIDIA H100 80GB HBM3", "device_kind": "cuda", "data": {"dir": "x", "train": 50000},
         "settings": {"batch_size": 512, "precision": "bf16", "quick": False, "model": "c1c2c3c4", "parameters": 1},
         "engines": {"gpu": engine}, "versions": {"torch": "2"}, "command": "python -m bench",
         "model_bound": {"default": variants[0], "variants": variants}}
    derive(r)
    assert math.isclose(engine["e2e_graph_ratio_to_graph_bound"], 0.6 / 0.5)
    graph_target = next(t for t in r["targets"] if "--cuda-graph" in t["name"] and "bound" in t["name"])
    assert math.isclose(graph_target["value"], 1.2) and graph_target["met"] is False
    fastest = r["targets"][-1]
    assert fastest["name"].startswith("fastest end-to-end epoch (gpu with --cuda-graph)") and fastest["met"] is True
    md = markdown(r)
    assert "## End-to-end with the step as a CUDA graph" in md and "| gpu | 0.60 (0.60–0.60) | 3.00× | 1.200 |" in md
    del engine["end_to_end_graph"]                       # a CPU run, or one from before: no such section
    assert "as a CUDA graph (`train.py" not in markdown(derive(r))


def test_a_model_of_ones_own_is_measured_or_refused_with_a_sentence(mini_dir, tmp_path, monkeypatch, capsys):
    """bench --model: a spec that does not build is one sentence and exit 2 before any measurement; the workers
    build the model it names (here as the worker does, in-process)."""
    from bench import measure
    from bench.__main__ import main
    from model import count_parameters
    assert main(["--data-dir", str(mini_dir), "--model", str(tmp_path / "absent.py") + ":Net",
                 "--out", str(tmp_path / "out")]) == 2
    assert "absent.py does not exist" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "tiny_net.py").write_text(
        "import torch.nn as nn\n"
        "def Net(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    monkeypatch.setitem(measure.MODEL, "spec", f"{tmp_path / 'tiny_net.py'}:Net")
    net, _ = measure.make_model(torch.device("cpu"))
    assert count_parameters(net) == 3 * 8 * 9 + 8 + 8 * 10 + 10
