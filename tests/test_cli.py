"""`rfpipe predict | bench | parity | export` on the untrained Nano package and small sample images."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from model_packages import packages  # noqa: F401  (session fixture)

import rfpipe
from rfpipe.tools.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos):
    """Two small photos (fast on 2 cores) in a folder."""
    folder = tmp_path_factory.mktemp("images")
    for name in ("chelsea", "coffee"):
        cv2.imwrite(str(folder / f"{name}.png"), photos[name][:240, :320])
    return folder


def test_predict_writes_inference_server_json_and_annotated_images(packages, images, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    code = main(["predict", str(packages["letterbox"]), str(images), "--out", str(out), "--json",
                 "--device", "cpu", "--confidence", "0.3", "--implementation", "cpu", "--quiet"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"].rsplit("/", 1)[-1] for line in lines] == ["chelsea.png", "coffee.png"]
    for line in lines:
        assert line["image"] == {"width": 320, "height": 240}
        assert line["predictions"], "the untrained model gives some detections above 0.3"
        for pred in line["predictions"]:
            assert set(pred) == {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id"}
            assert pred["confidence"] > 0.3 and pred["class"] in ("person", "bicycle", "car", "dog", "cat")
    saved = json.loads((out / "chelsea.json").read_text())
    assert [p["x"] for p in saved["predictions"]] == [p["x"] for p in lines[0]["predictions"]]
    # The annotated image differs from the input where boxes were drawn.
    annotated = cv2.imread(str(out / "chelsea.png"))
    original = cv2.imread(str(images / "chelsea.png"))
    assert annotated.shape == original.shape and not np.array_equal(annotated, original)


def test_predict_matches_the_detector(packages, images, capsys):  # noqa: F811
    main(["predict", str(packages["stretch"]), str(images / "coffee.png"), "--device", "cpu",
          "--implementation", "cpu", "--quiet"])
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    (dets,) = rfpipe.Detector.load(packages["stretch"])(cv2.imread(str(images / "coffee.png")), implementation="cpu")
    assert [(p["x"], p["y"], p["class_id"]) for p in line["predictions"]] == [
        ((x0 + x1) / 2, (y0 + y1) / 2, c) for (x0, y0, x1, y1), c in zip(dets.xyxy.tolist(), dets.class_id.tolist(), strict=True)
    ]


def test_predict_video_writes_an_annotated_video(packages, photos, tmp_path):  # noqa: F811
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    for shift in range(3):
        writer.write(np.ascontiguousarray(photos["rocket"][shift * 10 : shift * 10 + 120, :160]))
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", str(packages["stretch"]), str(video), "--out", str(out), "--device", "cpu",
                 "--confidence", "0.3", "--implementation", "cpu", "--quiet"]) == 0
    frames = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [f["frame"] for f in frames] == [0, 1, 2]
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 3


def test_bench_reports_stages_and_writes_json_and_chart(packages, images, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    assert main(["bench", str(packages["stretch"]), "--images", str(images), "--batch", "1", "--reps", "2",
                 "--warmup", "1", "--implementations", "reference,cpu", "--device", "cpu", "--out", str(out),
                 "--quiet"]) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = {(r["pipeline"], r["batch"]) for r in report["rows"]}
    assert rows == {("rfpipe/reference", 1), ("rfpipe/cpu", 1)}
    for row in report["rows"]:
        for stage in ("decode", "preprocess", "forward", "postprocess", "end_to_end"):
            assert 0 < row[stage]["median_ms"] <= row[stage]["p99_ms"]
        assert row["fps"] > 0
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "frames/s" in capsys.readouterr().out


def test_parity_of_identical_sides_is_perfect_and_torchvision_is_not(packages, images, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("pycocotools")
    pytest.importorskip("matplotlib")
    out = tmp_path / "parity"
    assert main(["parity", str(packages["stretch"]), "--images", str(images), "--a", "reference", "--b", "cpu",
                 "--device", "cpu", "--confidence", "0.3", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["frames"]["decoders"] == ["opencv", "opencv"] and report["frames"]["identical"] == 2
    assert report["frames"]["differing"] == 0 and report["frames"]["values"] == 2 * 240 * 320 * 3
    assert report["tensors"]["identical"] == 2 and report["tensors"]["max_abs_diff"] == 0
    assert report["detections"]["match_rate"] == 1.0 and report["detections"]["crossed_threshold"] == 0
    assert report["map"]["map_50_95"] == pytest.approx(1.0)
    assert (out / "parity.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["parity", str(packages["stretch"]), "--images", str(images), "--a", "reference", "--b",
                 "torchvision", "--device", "cpu", "--confidence", "0.3", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["tensors"]["identical"] == 0 and report["tensors"]["max_abs_diff"] > 0
    assert "mAP@[.5:.95]" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_parity_of_decoders_on_the_bundled_samples(packages, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("pycocotools")
    pytest.importorskip("matplotlib")
    from rfpipe.samples import sample_paths

    jpegs = sum(p.suffix == ".jpg" for p in sample_paths())
    assert 0 < jpegs < len(sample_paths())  # both kinds, so the non-JPEG route is exercised too
    out = tmp_path / "decoders"
    assert main(["parity", str(packages["stretch"]), "--a", "cpu", "--b", "cpu+gpu-decode", "--device", "cpu",
                 "--confidence", "0.3", "--out", str(out), "--quiet"]) == 0
    frames = json.loads((out / "parity.json").read_text())["frames"]
    assert frames["decoders"] == ["opencv", "gpu-decode"] and frames["device"] == "cpu"
    assert frames["images"] == len(sample_paths()) and frames["decoded_by_torchvision"] == [0, jpegs]
    assert frames["shape_mismatch"] == 0 and frames["max_abs_diff"] <= 8  # torchvision's libjpeg-turbo on the CPU
    assert f"B: torchvision on cpu {jpegs}/{len(sample_paths())}, the rest (not JPEG, or declined) OpenCV" in \
        capsys.readouterr().out

    assert main(["parity", str(packages["stretch"]), "--a", "reference+gpu-decode", "--b", "cpu+gpu-decode",
                 "--device", "cpu", "--confidence", "0.3", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["frames"]["decoded_by_torchvision"] == [jpegs, jpegs]
    assert report["frames"]["identical"] == len(sample_paths()) and report["frames"]["max_abs_diff"] == 0
    assert report["tensors"]["identical"] == len(sample_paths())
    assert main(["parity", str(packages["stretch"]), "--a", "cpu", "--b", "cpu+nvjpg", "--device", "cpu"]) == 2
    assert "unknown decoder 'nvjpg'" in capsys.readouterr().err


def test_frame_drift_counts_differences():
    from types import SimpleNamespace

    from rfpipe.tools.parity import FrameDrift

    side = SimpleNamespace(decoder="opencv", detector=SimpleNamespace(device="cpu"))
    drift = FrameDrift(side, side)
    frame = np.zeros((4, 5, 3), np.uint8)
    other = frame.copy()
    other[1, 2] = (0, 3, 250)
    assert drift.add(frame, frame) == {"frame_differing_values": 0, "frame_max_abs_diff": 0}
    assert drift.add(frame, torch.from_numpy(other)) == {"frame_differing_values": 2, "frame_max_abs_diff": 250}
    assert drift.add(frame, frame[:, :4]) == {"frame_shape_mismatch": True}
    report = drift.report()
    assert (report["images"], report["identical"], report["differing"], report["max_abs_diff"]) == (3, 1, 2, 250)
    assert report["decoded_by_torchvision"] == [0, 1] and report["shape_mismatch"] == 1
    assert report["mean_abs_diff"] == pytest.approx(253 / 120)


def test_parity_against_coco_annotations(packages, images, tmp_path):  # noqa: F811
    pytest.importorskip("pycocotools")
    (dets,) = rfpipe.Detector.load(packages["stretch"])(cv2.imread(str(images / "chelsea.png")), confidence=0.3,
                                                        implementation="cpu")
    coco = {
        "images": [{"id": 7, "file_name": "chelsea.png", "width": 320, "height": 240}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"},
                       {"id": 4, "name": "dog"}, {"id": 5, "name": "cat"}],
        "annotations": [{"id": i + 1, "image_id": 7, "category_id": int(c) + 1, "iscrowd": 0, "area": 1.0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0]}
                        for i, ((x0, y0, x1, y1), c) in enumerate(zip(dets.xyxy.tolist(), dets.class_id, strict=True))],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert main(["parity", str(packages["stretch"]), "--images", str(images), "--a", "reference", "--b", "cpu",
                 "--device", "cpu", "--confidence", "0.3", "--annotations", str(tmp_path / "coco.json"),
                 "--out", str(tmp_path / "p"), "--quiet"]) == 0
    report = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert report["map"]["map_50"] == pytest.approx(1.0)


def test_export_writes_a_package_every_backend_loads(packages, tmp_path, photos):  # noqa: F811
    out = tmp_path / "exported"
    assert main(["export", str(packages["checkpoint"]), str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"inference_config.json", "class_names.txt", "weights.onnx",
                                              "weights.pth", "model_type.json"}
    onnx_model = rfpipe.Detector.load(out, backend="onnx")
    assert onnx_model.class_names == ("person", "bicycle", "car", "dog", "cat")
    reference = rfpipe.Detector.load(packages["stretch"], backend="onnx")
    batch, _ = reference.preprocess(photos["astronaut"], implementation="cpu")
    for a, b in zip(onnx_model.forward(batch), reference.forward(batch), strict=True):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-4


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing"), str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "rfpipe predict: error:" in err and "Traceback" not in err


def test_serve_is_forwarded_to_the_server_cli(monkeypatch):
    import sys
    import types

    seen = {}
    module = types.ModuleType("rfpipe.server.cli")
    module.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "rfpipe.server", types.ModuleType("rfpipe.server"))
    monkeypatch.setitem(sys.modules, "rfpipe.server.cli", module)
    main(["serve", "pkg", "--port", "9001"])
    assert seen["argv"] == ["pkg", "--port", "9001"]


def test_predict_says_which_model_ran(packages, images, tmp_path, capsys):  # noqa: F811
    main(["predict", str(packages["stretch"]), str(images / "coffee.png"), "--device", "cpu", "--quiet"])
    assert "the UNTRAINED RF-DETR Nano" in capsys.readouterr().err
    given = tmp_path / "my-package"  # the same files outside rfpipe's cache: rfpipe cannot tell, so says "as given"
    given.mkdir()
    for name in ("inference_config.json", "class_names.txt", "weights.onnx"):
        os.link(packages["stretch"] / name, given / name)
    main(["predict", str(given), str(images / "coffee.png"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert f"model: {given}, as given" in err and "UNTRAINED" not in err


def _parse(argv):
    from rfpipe.tools.cli import build_parser

    return build_parser().parse_args(argv)


def test_shared_flags_mean_the_same_in_every_command():
    """--device, --backend, --dtype, --implementation: one definition (rfpipe.arguments) for all."""
    from rfpipe.arguments import BACKEND_CHOICES, DTYPE_CHOICES
    from rfpipe.devices import default_device

    for command in (["predict", "pkg", "img.jpg"], ["bench", "pkg"], ["parity", "pkg", "--a", "cpu", "--b", "reference"]):
        args = _parse(command)
        assert args.device == default_device() and args.backend == "auto" and args.dtype is None
        for backend in BACKEND_CHOICES:
            assert _parse([*command, "--backend", backend]).backend == backend
        for dtype in DTYPE_CHOICES:
            assert _parse([*command, "--dtype", dtype]).dtype == dtype
    assert _parse(["predict", "pkg", "i.jpg", "--implementation", "cpu"]).implementation == "cpu"
    assert _parse(["parity", "pkg", "--a", "cpu", "--b", "reference", "--implementation", "cuda"]).implementation == "cuda"
    assert _parse(["bench", "pkg", "--implementation", "cpu,reference"]).implementation == ["cpu", "reference"]
    assert _parse(["bench", "pkg"]).implementation is None  # reference,cpu[,cuda]


@pytest.mark.parametrize("argv", [
    ["parity", "pkg", "--a", "cpu", "--b", "reference", "--implementation", "fast"],
    ["predict", "pkg", "i.jpg", "--implementation", "fast"],
    ["bench", "pkg", "--implementation", "cpu,fast"],
    ["bench", "pkg", "--backend", "tflite"],
    ["predict", "pkg", "i.jpg", "--dtype", "int8"],
])
def test_unknown_choices_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(argv)
    err = capsys.readouterr().err
    assert "invalid choice" in err or "unknown implementation 'fast'" in err, err


def test_bench_keeps_the_old_implementations_spelling_hidden(capsys):
    assert _parse(["bench", "pkg", "--implementations", "reference"]).implementation == ["reference"]
    with pytest.raises(SystemExit):
        _parse(["bench", "--help"])
    help_text = capsys.readouterr().out
    assert "--implementation " in help_text and "--implementations" not in help_text


def test_parity_names_the_torchvision_side_as_users_know_it(capsys):
    import rfpipe.tools.parity as parity

    with pytest.raises(SystemExit):
        _parse(["parity", "--help"])
    assert "roboflow/inference PR #2477" in " ".join(capsys.readouterr().out.split())
    assert "seed PR" not in parity.__doc__ and "PR #2477" in parity.__doc__


@pytest.mark.parametrize("device", ["gpu", "cuda:9"])
def test_predict_on_a_device_that_does_not_exist_is_a_one_line_error(packages, images, device):  # noqa: F811
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "rfpipe.tools.cli", "predict", str(packages["stretch"]), str(images),
                           "--device", device], capture_output=True, text=True, timeout=300, env=os.environ)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("rfpipe predict: error:") and repr(device) in lines[0]
