"""Each extra of pyproject.toml works alone: it declares what its modules import.

Two checks. A static one (milliseconds): every third-party module that rfpipe's modules import is a
core dependency or declared by the extra those modules belong to. A real one (minutes, marked
`extras`): `pip install rfpipe` into a fresh virtual environment holding only torch, and
`pip install rfpipe[extra]` into one holding torch and the core dependencies, for each extra; then
every module of it and every module those import, and its commands' `--help`. What the environment
holds already is linked from this one (nothing large is downloaded or copied), and pip installs the
rest at the versions installed here, so its cache serves the wheels ./dev downloaded. `./dev test`
runs both; leave the slow one out locally with `-m "not extras"`.
"""

from __future__ import annotations

import ast
import concurrent.futures
import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Extra:
    modules: tuple[str, ...]  # files under the repository, globs allowed
    commands: tuple[tuple[str, ...], ...] = ()  # `rfpipe` arguments that must exit 0
    excluding: tuple[str, ...] = ()


EXTRAS = {
    "server": Extra(("rfpipe/server/*.py",), (("serve", "--help"),), excluding=("rfpipe/server/ray_serve.py",)),
    "ray": Extra(("rfpipe/server/ray_serve.py",), (("serve", "--help"),)),
    "cli": Extra(("rfpipe/tools/*.py",), (("predict", "--help"), ("bench", "--help"), ("parity", "--help"))),
    "torch-backend": Extra(("rfpipe/backends/torch.py", "rfpipe/export.py"), (("export", "--help"),)),
    "onnx": Extra(("rfpipe/backends/onnx.py",)),
    "streams": Extra(("rfpipe/streams/*.py",), (("stream", "--help"),)),
}

# Imported by rfpipe but declared by no extra, on purpose.
NOT_DECLARED = {
    "tensorrt": "NVIDIA's TensorRT, installed with the CUDA stack it matches; the tensorrt backend says so when missing",
    "triton": "installed with torch's CUDA builds; only the CUDA preprocessing imports it",
    "inference_models": "the baseline `rfpipe bench --compare-inference-models` times, installed by whoever asks for it",
    "inference": "the Roboflow inference server, in its own environment (requirements/inference-server.txt): "
                 "rfpipe.integrations.inference_server runs inside it",
    "pynvml": "NVIDIA's management library where the driver stack ships it: bench reads GPU utilisation with it, "
              "else from nvidia-smi",
}

# A core module's optional feature that needs an extra: (module, imported package) -> that extra.
FEATURES = {
    ("rfpipe/detections.py", "supervision"): "cli",  # Detections.to_supervision()
    ("rfpipe/backends/compiled.py", "tqdm"): "cli",  # the warm-up progress bar (log lines without it)
    ("rfpipe/integrations/inference_server.py", "uvicorn"): "server",  # serves the inference server's app
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _declared(requirements: list[str], extras: dict[str, list[str]]) -> set[str]:
    """Distribution names these requirements name, following `rfpipe[other]` into the other extras."""
    names = set()
    for line in requirements:
        requirement = Requirement(line)
        if _normalise(requirement.name) == "rfpipe":
            for other in requirement.extras:
                names |= _declared(extras[other], extras)
        else:
            names.add(_normalise(requirement.name))
    return names


def _files(extra: Extra, root: Path = REPO) -> list[Path]:
    found = {path for pattern in extra.modules for path in root.glob(pattern)}
    return sorted(found - {root / path for path in extra.excluding})


def third_party_imports(source: str) -> set[str]:
    """Absolute module names a Python source imports anywhere (also inside functions), except the
    standard library and rfpipe itself.

    >>> sorted(third_party_imports("import os\\nimport numpy as np\\ndef f():\\n    from certifi import where"))
    ['certifi', 'numpy']
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] not in sys.stdlib_module_names and n.split(".")[0] not in ("rfpipe", "__future__")}


def test_every_extra_is_checked():
    assert set(_pyproject()["project"]["optional-dependencies"]) - {"test"} == set(EXTRAS)
    for name, extra in EXTRAS.items():
        assert _files(extra), f"extra {name}: no module matches {extra.modules}"


def _undeclared(root: Path) -> list[str]:
    """'module imports package' for each import of the modules under `root` that neither the core
    dependencies nor the module's extra declare."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = _declared(project["dependencies"], extras)
    owner = {path: name for name, extra in EXTRAS.items() for path in _files(extra, root)}
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for path in sorted(root.glob("rfpipe/**/*.py")):
        allowed = core | (_declared(extras[owner[path]], extras) if path in owner else set())
        for module in sorted(third_party_imports(path.read_text())):
            top = module.split(".")[0]
            if top in NOT_DECLARED:
                continue
            feature = FEATURES.get((str(path.relative_to(root)), top))
            here = allowed | (_declared(extras[feature], extras) if feature else set())
            provided = {_normalise(d) for d in distributions.get(top, [top])}
            if not provided & here:
                where = f"extra {owner[path]!r}" if path in owner else "the core dependencies"
                problems.append(f"{path.relative_to(root)} imports {module}, which {where} does not declare")
    return problems


def test_every_import_is_declared_by_its_extra_or_the_core():
    assert _undeclared(REPO) == []


def test_an_undeclared_import_is_reported(tmp_path):
    (tmp_path / "rfpipe" / "server").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (tmp_path / "rfpipe" / "server" / "images.py").write_text("def fetch():\n    import certifi\n")
    extras = _pyproject()["project"]["optional-dependencies"]
    if "certifi" in _declared(extras["server"], extras):  # the fixed pyproject declares it: take it out again
        text = (tmp_path / "pyproject.toml").read_text()
        (tmp_path / "pyproject.toml").write_text(re.sub(r'"certifi[^"]*",\s*', "", text))
    assert _undeclared(tmp_path) == ["rfpipe/server/images.py imports certifi, which extra 'server' does not declare"]


# -- the real check: each extra installed alone into a fresh environment -----------------------

_CHECK = """
import ast, importlib, sys, traceback
problems = []
for path, module in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        importlib.import_module(module)
    except Exception as error:
        problems.append(f"import {module}: {type(error).__name__}: {error}")
        continue
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ("rfpipe", "__future__") or top in NOT_DECLARED:
                continue
            try:
                importlib.import_module(name)
            except Exception as error:
                problems.append(f"{module} imports {name}: {type(error).__name__}: {error}")
print("\\n".join(problems))
sys.exit(1 if problems else 0)
"""


def _closure(names: list[str]) -> list[importlib.metadata.Distribution]:
    """These distributions and everything they need, as installed here."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _normalise(todo.pop())
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform
        seen[name] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(seen.values())


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)


def _linked(site: Path, distributions: list[importlib.metadata.Distribution]) -> Path:
    """A folder of links to these distributions' installed files (a site directory to put on sys.path)."""
    site.mkdir()
    for dist in distributions:
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if not (site / top).exists() and Path(dist.locate_file(top)).exists():
                (site / top).symlink_to(Path(dist.locate_file(top)))
    return site


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory):
    """A function: extra -> a new environment with torch and `rfpipe[extra]` (its python, its env vars)."""
    root = tmp_path_factory.mktemp("extras")
    core = [Requirement(line).name for line in _pyproject()["project"]["dependencies"]]
    # Linked, not installed: torch alone for the core package, torch and the core dependencies for
    # the extras (the core environment checks those are declared; each extra checks its own).
    sites = {"torch": _linked(root / "torch-site", _closure(["torch", "torchvision"])),
             "core": _linked(root / "core-site", _closure(["torch", "torchvision", *core]))}
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "wheel", REPO])
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "wheel").glob("rfpipe-*.whl")
    installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                       if _normalise(d.metadata["Name"] or "rfpipe") != "rfpipe")
    constraints = root / "installed-here.txt"
    constraints.write_text("\n".join(installed) + "\n")

    def make(extra: str) -> tuple[Path, dict[str, str]]:
        venv = root / (extra or "core")
        made = _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv])
        assert made.returncode == 0, made.stderr
        python = venv / "bin" / "python"
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        (Path(site) / "rfpipe-test-linked.pth").write_text(f"{sites['core' if extra else 'torch']}\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        pip = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--disable-pip-version-check",
                    "-c", constraints, f"rfpipe{f'[{extra}]' if extra else ''} @ {wheel.as_uri()}"], env=env, cwd=root)
        assert pip.returncode == 0, f"pip install rfpipe[{extra}] failed:\n{pip.stdout}\n{pip.stderr}"
        return python, env

    # pip mostly waits on the package index: three environments at a time take half as long on two cores
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        made = {extra: pool.submit(make, extra) for extra in ["", *sorted(EXTRAS)]}

        def install(extra: str) -> tuple[Path, dict[str, str]]:
            return made[extra].result()

        yield install, root


def _check_imports(python: Path, env: dict[str, str], root: Path, files: list[Path], exempt: set[str]) -> None:
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in files]
    check = f"NOT_DECLARED = {sorted(exempt)!r}\n" + _CHECK
    imported = _run([python, "-c", check, *[x for pair in zip(files, modules) for x in pair]], env=env, cwd=root)
    assert imported.returncode == 0, f"{imported.stdout}{imported.stderr[-3000:]}"


def _check_commands(python: Path, env: dict[str, str], root: Path, commands: tuple[tuple[str, ...], ...]) -> None:
    for command in commands:
        ran = _run([python.parent / "rfpipe", *command], env=env, cwd=root)
        assert ran.returncode == 0, f"rfpipe {' '.join(command)}:\n{ran.stderr[-3000:]}"


@pytest.mark.extras
@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_each_extra_installs_alone_and_its_commands_start(fresh_install, name):
    install, root = fresh_install
    python, env = install(name)
    _check_imports(python, env, root, _files(EXTRAS[name]), set(NOT_DECLARED))
    _check_commands(python, env, root, EXTRAS[name].commands)


@pytest.mark.extras
def test_the_core_package_installs_alone(fresh_install):
    """`pip install rfpipe` over torch alone: every module no extra owns imports, and `rfpipe --help` runs."""
    install, root = fresh_install
    python, env = install("")
    owned = {path for extra in EXTRAS.values() for path in _files(extra)}
    files = sorted(set(REPO.glob("rfpipe/**/*.py")) - owned)
    _check_imports(python, env, root, files, set(NOT_DECLARED) | {package for _, package in FEATURES})
    _check_commands(python, env, root, (("--help",),))
