"""rfpipe's HTTP server: the Roboflow inference-server API over dynamically batched detectors."""

from rfpipe.server.app import create_app
from rfpipe.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
