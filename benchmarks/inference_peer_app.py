"""benchmarks/inference_server_app.py's app, with the WebRTC and S3-sink imports stubbed where not installed.

For the GPU machine, where the peer's wheels must fit one device call (benchmarks/peer_gpu.sh):
    python -m uvicorn --app-dir RFPIPE/benchmarks inference_peer_app:app --host 127.0.0.1 --port 9702
Same environment variables and working directory as inference_server_app.py says.
"""

import logging

import peer_stubs

_stubbed = peer_stubs.install()
if _stubbed:
    logging.getLogger("uvicorn.error").warning("peer_stubs: placeholder modules for %s (WebRTC and the Workflows S3 sink only)", ", ".join(_stubbed))

from inference_server_app import app  # noqa: E402,F401
