"""Placeholder modules for the peer server's WebRTC and S3 imports, when the real ones are not installed.

`inference` 1.8.3's HTTP app imports its WebRTC worker at start-up
(inference/core/interfaces/http/http_api.py -> inference/core/interfaces/webrtc_worker ->
streamvision/webrtc_worker/webrtc.py), which imports aiortc, aioice and PyAV at module level. Those
wheels are ~46 MB (PyAV's alone 40 MB), more than a device call can carry beside everything else,
and no HTTP inference request uses them (only the /initialise_webrtc_worker and stream endpoints do).
Likewise boto3/botocore (14.6 MB with s3transfer and jmespath): imported at start-up only by the
Workflows S3 sink block (roboflow_workflows/core_steps/sinks/s3/v1.py, loaded with every block);
inference's own S3 model download imports them only when OFFLINE_MODE is off and AWS keys are set.
`install()` appends a finder to the END of sys.meta_path: a real installed module always wins; a
missing one under the named top-level packages becomes a module whose every attribute is an inert
placeholder class (so `from aiortc import RTCPeerConnection`, subclassing and decorating at import
time all work). Calling into a placeholder at request time raises, loudly, instead of pretending.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _PlaceholderMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


def _placeholder(name):
    def _refuse(self, *args, **kwargs):
        raise RuntimeError(f"{name} is a placeholder (benchmarks/peer_stubs.py): the real package is not installed")

    return _PlaceholderMeta(name.rsplit(".", 1)[-1], (), {"__qualname__": name, "__init__": _refuse})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = frozenset(roots)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".", 1)[0] not in self.roots:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


STUBBED = ("av", "aiortc", "aioice", "boto3", "botocore")


def install(roots=STUBBED):
    """Stub the named top-level packages where no real one is installed; returns those stubbed."""
    import importlib.util

    missing = tuple(r for r in roots if importlib.util.find_spec(r) is None)
    if missing:
        sys.meta_path.append(_Finder(missing))
    return missing
