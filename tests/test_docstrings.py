"""Docstring examples run: the modules below are doctested; an example that cannot run here says why.

Convention: an example that needs what a test machine lacks ends with one reason word, then the
directive: `>>> model(frame)  # model  # doctest: +SKIP`. Reasons: gpu, model (a model package or
checkpoint), file (an image file of the user's), network, server (a running server), slow, sketch
(names a reader fills in). A bare `+SKIP` fails the check below.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

import rfpipe

REASONS = {"gpu", "model", "file", "network", "server", "slow", "sketch"}
# Modules whose examples need no model, GPU or file: every one of their examples runs.
RUNNABLE = [
    "rfpipe.arguments",
    "rfpipe.backends.compiled",
    "rfpipe.config",
    "rfpipe.detections",
    "rfpipe.devices",
    "rfpipe.engine",
    "rfpipe.geometry",
    "rfpipe.io.decode",
    "rfpipe.io.gpu",
    "rfpipe.io.header",
    "rfpipe.postprocess",
    "rfpipe.preprocess",
    "rfpipe.preprocess.cuda",
    "rfpipe.preprocess.cuda.staging",
    "rfpipe.preprocess.inputs",
    "rfpipe.preprocess.kernels.float_tables",
    "rfpipe.samples",
    "rfpipe.server.cli",
]
PACKAGE = Path(rfpipe.__file__).parent
# The server's examples are the server helper's to convert (issue #9); remove this once done.
NOT_YET_CHECKED = ("server/",)
SKIP = re.compile(r"#\s*doctest:.*\+SKIP")
REASONED = re.compile(r"#\s*(\w+)\s+#\s*doctest:.*\+SKIP")


@pytest.mark.parametrize("name", RUNNABLE)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder().find(module, name)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} has no runnable docstring example"
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed (see the output above)"


def test_skipped_examples_say_why_in_one_word():
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(NOT_YET_CHECKED):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SKIP.search(line):
                reason = REASONED.search(line)
                if reason is None or reason.group(1) not in REASONS:
                    silent.append(f"rfpipe/{relative}:{number}: {line.strip()}")
    assert not silent, "examples skipped without a reason word:\n" + "\n".join(silent)
