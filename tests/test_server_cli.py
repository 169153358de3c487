"""`rfpipe serve` arguments -> settings and devices (the model loading itself is the Detector's)."""

from __future__ import annotations

import pytest
import uvicorn

from rfpipe.devices import default_device
from rfpipe.server import launch
from rfpipe.server.cli import (
    build_parser,
    launch_from_args,
    load_options,
    main,
    parse_devices,
    settings_from_args,
)
from rfpipe.server.launch import Launch, process_devices, uvicorn_options


def test_flags_become_settings():
    args = build_parser().parse_args(["pkgs/cars", "--model-id", "cars/3", "--max-batch", "16", "--max-wait-ms", "2",
                                      "--queue-size", "64", "--request-timeout", "5", "--max-body-mb", "1.5",
                                      "--max-pixels", "1000", "--max-images", "2", "--allow-url-input"])
    s = settings_from_args(args)
    assert (s.model_id, s.max_batch, s.max_wait_ms, s.queue_size, s.request_timeout_s) == ("cars/3", 16, 2.0, 64, 5.0)
    assert (s.max_body_bytes, s.max_pixels, s.max_images, s.allow_url_input) == (1572864, 1000, 2, True)
    assert args.host == "127.0.0.1" and args.port == 9001  # loopback unless the operator says otherwise
    assert not s.gpu_decode
    assert settings_from_args(build_parser().parse_args(["m", "--gpu-decode"])).gpu_decode


def test_model_id_defaults_to_the_package_name():
    assert settings_from_args(build_parser().parse_args(["/models/cars"])).model_id == "cars"


def test_devices():
    assert parse_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    for bad in ("cuda:0,cuda:0", "cuda:0,", ""):
        with pytest.raises(ValueError):
            parse_devices(bad)


def test_invalid_limits_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        settings_from_args(build_parser().parse_args(["m", "--max-batch", "0"]))


def test_gpu_decode_without_cuda_devices_is_refused_before_loading(tmp_path, capsys):
    for device in ("cpu", "cuda:0,cpu"):
        with pytest.raises(SystemExit) as exit_info:  # tmp_path has no model: loading it would fail otherwise
            main([str(tmp_path / "missing"), "--gpu-decode", "--device", device])
        assert exit_info.value.code == 2
        assert "--gpu-decode decodes JPEG on a GPU" in capsys.readouterr().err


def test_processes_below_one_are_refused(tmp_path, capsys):
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as exit_info:
            main([str(tmp_path / "missing"), "--processes", bad])
        assert exit_info.value.code == 2
        assert "--processes must be at least 1" in capsys.readouterr().err


def test_one_process_serves_in_this_process(monkeypatch):
    served = []
    monkeypatch.setattr(launch, "load_app", lambda launch, devices, settings: ("app", devices))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options["port"])))
    assert main(["m", "--device", "cpu", "--port", "9100"]) == 0
    assert served == [(("app", ["cpu"]), 9100)]


def test_processes_split_the_devices_or_share_them():
    assert process_devices(["cuda:0", "cuda:1"], 2) == [["cuda:0"], ["cuda:1"]]
    assert process_devices(["cuda:0", "cuda:1", "cuda:2", "cuda:3"], 2) == [["cuda:0", "cuda:2"], ["cuda:1", "cuda:3"]]
    assert process_devices(["cuda:0"], 2) == [["cuda:0"], ["cuda:0"]]  # two processes on one GPU
    assert process_devices(["cuda:0", "cuda:1"], 3) == [["cuda:0"], ["cuda:1"], ["cuda:0"]]


def test_device_defaults_like_the_other_commands(monkeypatch):
    served = []
    monkeypatch.setattr(launch, "load_app", lambda launch, devices, settings: ("app", devices))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    assert main(["m"]) == 0
    assert served == [("app", [default_device()])]


def test_engine_flags_reach_the_settings_and_the_loader():
    args = build_parser().parse_args(["m", "--batch-policy", "fixed", "--max-batch", "64", "--compile", "cudagraphs",
                                      "--dtype", "bfloat16", "--drain-timeout", "5", "--body-timeout", "2"])
    s = settings_from_args(args)
    assert (s.batch_policy, s.max_batch, s.body_timeout_s) == ("fixed", 64, 2.0)
    assert load_options(args) == {"dtype": "bfloat16", "compile": "cudagraphs", "max_batch": 64}
    assert load_options(build_parser().parse_args(["m"])) == {}  # nothing the loader did not ask for
    started = launch_from_args(args, ["cpu"])
    assert started.drain_timeout_s == 5.0 and started.load_options["compile"] == "cudagraphs"
    options = uvicorn_options(started)
    assert options["timeout_graceful_shutdown"] == 5.0 and options["limit_concurrency"] == 1024
    with pytest.raises(SystemExit):
        build_parser().parse_args(["m", "--batch-policy", "sometimes"])


def test_buckets_reach_the_loader_and_must_end_at_the_max_batch(tmp_path, capsys):
    args = build_parser().parse_args(["m", "--compile", "auto", "--max-batch", "64", "--buckets", "64,1,8"])
    assert load_options(args) == {"compile": "auto", "max_batch": 64, "buckets": (1, 8, 64)}
    inferred = build_parser().parse_args(["m", "--compile", "auto", "--buckets", "1,32"])  # no --max-batch
    assert load_options(inferred)["max_batch"] == 32 and settings_from_args(inferred).max_batch == 32
    assert settings_from_args(build_parser().parse_args(["m"])).max_batch == 8
    for flags, message in ((["--compile", "auto", "--max-batch", "16", "--buckets", "1,8"],
                            "the largest of --buckets (8) must be --max-batch (16)"),
                           (["--buckets", "1,8"], "--buckets are the batch sizes of the compiled forward"),
                           (["--buckets", "1,x"], "--buckets takes a comma list of batch sizes >= 1"),
                           (["--buckets", "0,8"], "--buckets takes a comma list of batch sizes >= 1")):
        with pytest.raises(SystemExit) as exit_info:  # refused before any model loads
            main([str(tmp_path / "missing"), "--device", "cpu", *flags])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_launch_refuses_bad_process_counts():
    with pytest.raises(ValueError, match="--workers-per-device"):
        Launch("m", workers_per_device=0)
