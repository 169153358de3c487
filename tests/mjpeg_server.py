"""A small MJPEG-over-HTTP camera for the stream tests: `python mjpeg_server.py PORT [--fps 20] [--size 160x120]`.

Serves `multipart/x-mixed-replace` JPEG frames on 127.0.0.1:PORT (any path) at `--fps`, the way IP
cameras do. Each frame is a flat grey whose level steps with the frame number, plus the number
drawn in it, so a reader can tell frames apart. `--port 0` picks a free port. Prints
`listening PORT` on stdout once it accepts connections. Stops on SIGTERM/SIGINT or when killed.
"""

from __future__ import annotations

import argparse
import http.server
import socketserver
import sys
import time

import cv2
import numpy as np

BOUNDARY = "rfpipeframe"


def frame_bytes(number: int, width: int, height: int) -> bytes:
    image = np.full((height, width, 3), 40 + (number * 7) % 180, np.uint8)
    cv2.putText(image, str(number), (4, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def make_handler(fps: float, width: int, height: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            number = 0
            try:
                while True:
                    data = frame_bytes(number, width, height)
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    number += 1
                    time.sleep(1.0 / fps)
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args) -> None:  # quiet
            pass

    return Handler


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--size", default="160x120")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    server = Server(("127.0.0.1", args.port), make_handler(args.fps, width, height))
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
