"""How long the server takes to serialise an answer: the standard library's json (Starlette's JSONResponse) vs orjson.

Answers of 0, 10, 100 and 300 detections in the inference server's shape; prints microseconds per
answer and the ratio against json measured in the same run. The bytes must be the same JSON value.

    python benchmarks/server_json.py
"""

from __future__ import annotations

import json
import platform
import timeit
import uuid

import orjson


def answer(detections: int) -> dict:
    predictions = [{"x": 100.5 + i, "y": 200.0 + i / 3, "width": 50.0 + i, "height": 80.0, "confidence": 0.9 - i / 1000,
                    "class": f"class-{i % 7}", "class_id": i % 7, "detection_id": str(uuid.uuid4())}
                   for i in range(detections)]
    return {"inference_id": uuid.uuid4().hex, "time": 0.0123, "image": {"width": 1280, "height": 720},
            "predictions": predictions, "visualization": None}


def starlette(content: dict) -> bytes:  # what starlette.responses.JSONResponse.render does
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def main() -> None:
    print(f"python {platform.python_version()}, orjson {orjson.__version__}, {platform.machine()}")
    for detections in (0, 10, 100, 300):
        content = answer(detections)
        assert json.loads(starlette(content)) == json.loads(orjson.dumps(content))
        runs = 2000
        base = min(timeit.repeat(lambda c=content: starlette(c), number=runs, repeat=5)) / runs * 1e6
        fast = min(timeit.repeat(lambda c=content: orjson.dumps(c), number=runs, repeat=5)) / runs * 1e6
        print(f"{detections:4d} detections: json {base:8.1f} us  orjson {fast:7.1f} us  ratio {base / fast:5.1f}x")


if __name__ == "__main__":
    main()
