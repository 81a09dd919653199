"""Check the package a user installs: build the sdist and the wheel, install the wheel
(not the checkout) into a fresh virtual environment, and run the README's quickstart
against it.

``python tools/wheel_check.py`` (``.ci/run`` runs it after the tests) does, in a
temporary directory:

1. ``python -m build`` with ``HATCH_BUILD_HOOK_ENABLE_MYPYC=1``: the sdist, then the
   wheel built from that sdist (so the sdist holds all a build needs), compiled:
   mypyc builds the modules of ``udpchat_proto.build.HOT_PATH`` (``--pure``: not,
   for a machine with no C compiler); both named with ``__version__`` of
   ``src/udpchat_proto/__init__.py``, the single source of the version;
2. checks what each holds: the sdist the sources, tests, docs, README, LICENSE,
   CHANGELOG and the systemd unit; the wheel the three packages, each with its
   ``py.typed``, the two console scripts, an extension module for each module of
   the hot path and mypyc's shared runtime beside them (compiled), and nothing else;
3. ``python -m venv .venv`` there and ``pip install`` of the wheel (its dependencies
   from the index, as a user gets them);
4. that the base install is small: the distributions it pulled are those of
   :data:`BASE_DISTRIBUTIONS` and no more, and the two commands that need an extra
   (``udpchat-cli chat``, ``udpchat-server --metrics``) exit 1 with one line naming
   what installs it, before anything is opened;
5. from that directory (the checkout is not importable there): both tools'
   ``--version`` (the server's second line says which build it is), then
   ``udpchat-server`` on 127.0.0.1 port 0 with its database in the temporary
   directory, the README's quickstart and room blocks pasted into bash as they are
   (their ``export PATH="$PWD/.venv/bin:$PATH"`` finds the fresh environment), and
   SIGTERM to the server, which must exit 0;
6. with ``--tests`` (as ``.ci/run`` asks): the test dependencies (those of the dev
   extra in :data:`TEST_TOOLS`, and the extras in :data:`TEST_EXTRAS`) installed into
   that environment, then :data:`TEST_SUBSET` of the checkout's tests run by its
   Python with ``UDPCHAT_TEST_BUILD=compiled`` (``pure`` with ``--pure``), so that they
   import the installed wheel, not the checkout (``tests/test_build.py`` fails if the
   build is not the one asked for).

Every wait is bounded; the server is killed whatever happens. Exit status 0 when all
is well, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("udpchat_proto", "udpchat_server", "udpchat_cli")
#: What the sdist must hold besides each package's ``__init__.py`` and ``py.typed``.
SDIST_FILES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "PKG-INFO",
    "contrib/udpchat-server.service",
    "docs/OPERATIONS.md",
    "docs/PROTOCOL.md",
    "tests/conftest.py",
    "tests/e2e/conftest.py",
)
#: What the quickstart and room blocks must print (as the README says they do).
EXPECTED_OUTPUT = (
    "alice -> bob: Hi Bob!",
    "bob -> alice: Hi Alice, how are you?",
    "bob offline",
    "alice -> #general: Welcome, both of you!",
    "bob -> #general: Thanks Alice",
    "#general (3 members)",
)
#: Every distribution ``pip install udpchat-proto`` may pull (besides itself and pip):
#: the core's four, the commands' two, end-to-end encryption's vodozemac, and what
#: cryptography and cattrs need.
BASE_DISTRIBUTIONS = frozenset(
    {
        "attrs",
        "cattrs",
        "cryptography",
        "orjson",
        "click",
        "platformdirs",
        "vodozemac",
        "cffi",
        "pycparser",
        "typing-extensions",
    }
)
#: What each command without its extra must say (one line on stderr, exit 1).
MISSING_EXTRAS = (
    (("udpchat-cli", "chat"), "error: the chat needs Textual: pip install 'udpchat-proto[tui]'"),
    (
        ("udpchat-server", "--port", "0", "--db", "extra.sqlite3", "--metrics", "0"),
        "error: --metrics needs prometheus-client: pip install 'udpchat-proto[metrics]'",
    ),
)
#: The modules the compiled wheel compiles: ``udpchat_proto.build.HOT_PATH``, read
#: from pyproject.toml's mypyc hook (tests/test_build.py keeps the two equal), as
#: the files the wheel holds for them.
HOOK = "HATCH_BUILD_HOOK_ENABLE_MYPYC"
#: What mypyc puts beside the packages: its shared runtime, one file.
MYPYC_RUNTIME = "*__mypyc.cpython-*.so"
#: The tests run against the installed compiled wheel (``--tests``): the transport's,
#: the chat core's, and the end-to-end ones of loss, rooms, a server killed and
#: restarted, sessions and the tools' versions (about 900 tests; 3 to 6 min on 4
#: processes of this 2-core machine, most of it the end-to-end tests' waits). The
#: rest of the suite (the CLI's longer flows, the crash loop, the store's SQL, the
#: cluster, the chat's screen, the fuzzers, the benchmarks, the docs) runs on the pure
#: build only; the README's quickstart above runs on both.
TEST_SUBSET = (
    "tests/test_build.py",
    "tests/test_transport.py",
    "tests/test_transport_defences.py",
    "tests/test_transport_wire.py",
    "tests/test_packet.py",
    "tests/test_rangeset.py",
    "tests/test_recovery.py",
    "tests/test_replay.py",
    "tests/test_state_machines.py",
    "tests/test_noise.py",
    "tests/test_interop.py",
    "tests/test_versions.py",
    "tests/test_public_api.py",
    "tests/test_client.py",
    "tests/test_chat_accounts.py",
    "tests/test_chat_delivery.py",
    "tests/test_chat_flow.py",
    "tests/test_chat_rooms.py",
    "tests/test_server_turn.py",
    "tests/test_server_parts.py",
    "tests/test_server_limits.py",
    "tests/test_deferred_cursors.py",
    "tests/test_staged_sends.py",
    "tests/test_codec.py",
    "tests/test_packaging.py",
    "tests/e2e/test_rooms.py",
    "tests/e2e/test_lossy_network.py",
    "tests/e2e/test_server_process.py",
    "tests/e2e/test_sessions.py",
)
#: The dev extra's test tools (their pins are pyproject.toml's).
TEST_TOOLS = ("pytest", "pytest-xdist", "hypothesis", "noiseprotocol")
#: The extras the subset imports (metrics, PostgreSQL for the server's stores).
TEST_EXTRAS = "all"
TEST_TIMEOUT = 900.0
BUILD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 300.0
START_DEADLINE = 30.0
QUICKSTART_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
_LISTENING = re.compile(r"listening on (\S+):(\d+) key (SHA256:\S+)")


class PackageCheckError(Exception):
    """One line: what is wrong with the package."""


def source_version() -> str:
    """``__version__`` as hatchling reads it from the single source."""
    text = (ROOT / "src" / "udpchat_proto" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise PackageCheckError("src/udpchat_proto/__init__.py has no __version__")
    return match.group(1)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment less any UDPCHAT_ variable and any virtual environment."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("UDPCHAT_") and key not in {"VIRTUAL_ENV", "PYTHONPATH"}
    }
    env.update(extra)
    return env


def run(
    args: Sequence[str | Path], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run ``args``, bounded; its stdout, or PackageCheckError with its output."""
    shown = " ".join(str(arg) for arg in args)
    try:
        done = subprocess.run(
            [str(arg) for arg in args],
            cwd=cwd,
            env=clean_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PackageCheckError(f"{shown}: no end within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise PackageCheckError(f"{shown}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


@contextmanager
def step(name: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"-- {name}", flush=True)
    yield
    print(f"   {time.monotonic() - started:.1f} s", flush=True)


def hot_path_files() -> list[str]:
    """The files the mypyc hook compiles, relative to ``src/``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    hook = project["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    return [path.removeprefix("src/") for path in hook["include"]]


def build(dist: Path, version: str, *, compiled: bool) -> tuple[Path, Path]:
    env = (
        clean_env(**{HOOK: "1"})
        if compiled
        else {k: v for k, v in clean_env().items() if k != HOOK}
    )
    command: list[str | Path] = [sys.executable, "-m", "build", "--outdir", dist, ROOT]
    run(command, cwd=ROOT, timeout=BUILD_TIMEOUT, env=env)
    sdist = dist / f"udpchat_proto-{version}.tar.gz"
    # A compiled wheel is tagged for this interpreter and platform (cp311-cp311-...).
    tag = "cp*-cp*-*" if compiled else "py3-none-any"
    wheels = sorted(dist.glob(f"udpchat_proto-{version}-{tag}.whl"))
    found = sorted(p.name for p in dist.iterdir())
    if not sdist.is_file():
        raise PackageCheckError(f"no {sdist.name} (version {version}); built: {found}")
    if len(wheels) != 1:
        raise PackageCheckError(f"no udpchat_proto-{version}-{tag}.whl; built: {found}")
    return sdist, wheels[0]


def check_sdist(sdist: Path, version: str) -> None:
    prefix = f"udpchat_proto-{version}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
        pkg_info = archive.extractfile(prefix + "PKG-INFO")
        metadata = pkg_info.read().decode() if pkg_info is not None else ""
    wanted = [
        *SDIST_FILES,
        *(f"src/{package}/{name}" for package in PACKAGES for name in ("__init__.py", "py.typed")),
    ]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise PackageCheckError(f"the sdist lacks {missing}")
    if f"\nVersion: {version}\n" not in metadata:
        raise PackageCheckError(f"the sdist's PKG-INFO does not say Version: {version}")


def check_wheel(wheel: Path, version: str, *, compiled: bool) -> None:
    info = f"udpchat_proto-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    tops = {name.split("/", 1)[0] for name in names}
    runtime = {top for top in tops if fnmatch.fnmatch(top, MYPYC_RUNTIME)}
    if compiled and len(runtime) != 1:
        raise PackageCheckError(f"the compiled wheel holds {sorted(runtime)} as mypyc's runtime")
    if tops - runtime != {*PACKAGES, info} or (runtime and not compiled):
        raise PackageCheckError(f"the wheel holds {sorted(tops)}, not just {[*PACKAGES, info]}")
    extensions = [name for name in names if name.endswith(".so")]
    if compiled:
        wanted = {path.removesuffix(".py") for path in hot_path_files()}
        built = {name.split(".", 1)[0] for name in extensions if "/" in name}
        if built != wanted:
            raise PackageCheckError(
                f"the compiled wheel's extensions are {sorted(built)}, not {sorted(wanted)}"
            )
    elif extensions:
        raise PackageCheckError(f"the pure wheel holds extensions: {sorted(extensions)}")
    missing = [
        f"{package}/{name}"
        for package in PACKAGES
        for name in ("__init__.py", "py.typed")
        if f"{package}/{name}" not in names
    ]
    if missing:
        raise PackageCheckError(f"the wheel lacks {missing}")
    if f"\nVersion: {version}\n" not in metadata:
        raise PackageCheckError(f"the wheel's METADATA does not say Version: {version}")
    for script in (
        "udpchat-server = udpchat_server.cli:main",
        "udpchat-cli = udpchat_cli.cli:main",
    ):
        if script not in entry_points:
            raise PackageCheckError(f"the wheel's entry points lack {script!r}")


def install(work: Path, wheel: Path) -> Path:
    """A fresh virtual environment in ``work/.venv`` with the wheel; its bin directory."""
    venv = work / ".venv"
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", venv], cwd=work, timeout=INSTALL_TIMEOUT)
    bin_dir = venv / "bin"
    run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", wheel],
        cwd=work,
        timeout=INSTALL_TIMEOUT,
    )
    where = run(
        [bin_dir / "python", "-c", "import udpchat_proto; print(udpchat_proto.__file__)"],
        cwd=work,
        timeout=30,
    ).strip()
    if not Path(where).is_relative_to(venv):
        raise PackageCheckError(f"udpchat_proto comes from {where}, not from the fresh environment")
    return bin_dir


def check_versions(bin_dir: Path, work: Path, version: str, *, compiled: bool) -> None:
    build = (
        f"build: compiled (mypyc, {len(hot_path_files())} modules)"
        if compiled
        else "build: pure Python"
    )
    for tool in ("udpchat-server", "udpchat-cli"):
        shown = run([bin_dir / tool, "--version"], cwd=work, timeout=30).splitlines()
        if not shown or not shown[0].endswith(f"version {version}"):
            raise PackageCheckError(f"{tool} --version says {shown!r}, not version {version}")
        if tool == "udpchat-server" and shown[1:] != [build]:
            raise PackageCheckError(f"{tool} --version says {shown!r}, not {build!r}")


def check_base_install(bin_dir: Path, work: Path) -> None:
    """The wheel alone pulls only :data:`BASE_DISTRIBUTIONS`; the commands that need an
    extra refuse with the line that names it, and open nothing."""
    pip_list: list[str | Path] = [bin_dir / "python", "-m", "pip", "list", "--format=freeze"]
    listed = run(pip_list, cwd=work, timeout=INSTALL_TIMEOUT)
    names = {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines() if line}
    extra = names - BASE_DISTRIBUTIONS - {"udpchat-proto", "pip", "setuptools", "wheel"}
    if extra:
        raise PackageCheckError(f"the base install pulled {sorted(extra)} as well")
    for command, expected in MISSING_EXTRAS:
        proc = subprocess.run(
            [bin_dir / command[0], *command[1:]],
            cwd=work,
            env=clean_env(UDPCHAT_HOME=str(work / "extras-home")),
            capture_output=True,
            text=True,
            timeout=START_DEADLINE,
            check=False,
        )
        if proc.returncode != 1 or proc.stderr.strip() != expected:
            raise PackageCheckError(
                f"{' '.join(command)} without its extra exited {proc.returncode} with "
                f"{proc.stderr.strip()!r}, not 1 with {expected!r}"
            )
    if (work / "extra.sqlite3").exists():
        raise PackageCheckError("udpchat-server --metrics without its extra made a database")


def readme_block(name: str) -> str:
    """The shell block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- {name}:begin -->\s*```sh\n(.*?)```\s*<!-- {name}:end -->", readme, re.DOTALL
    )
    if match is None:
        raise PackageCheckError(f"README.md has no {name} block")
    return match.group(1)


def start_server(bin_dir: Path, work: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``udpchat-server`` on 127.0.0.1 port 0; the process and its HOST:PORT."""
    command = [
        str(bin_dir / "udpchat-server"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--db",
        str(work / "udpchat.sqlite3"),
    ]
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            command,
            cwd=work,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            match = _LISTENING.fullmatch(line.strip())
            if match is None:
                break
            return proc, f"{match.group(1)}:{match.group(2)}"
    stop_server(proc)
    raise PackageCheckError(
        f"the server did not start; its log:\n{log.read_text(errors='replace')}"
    )


def stop_server(proc: subprocess.Popen[str]) -> int | None:
    """SIGTERM, bounded, then SIGKILL; the exit status after SIGTERM, None if killed."""
    status: int | None = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    else:
        status = proc.returncode
    if proc.stdout is not None:
        proc.stdout.close()
    return status


def quickstart(bin_dir: Path, work: Path) -> None:
    log = work / "server.log"
    proc, address = start_server(bin_dir, work, log)
    try:
        script = "set -eu\n" + readme_block("quickstart") + readme_block("rooms")
        env = clean_env(UDPCHAT_SERVER=address, UDPCHAT_HOME=str(work / "home"))
        out = run(["bash", "-c", script], cwd=work, env=env, timeout=QUICKSTART_TIMEOUT)
    finally:
        status = stop_server(proc)
    missing = [line for line in EXPECTED_OUTPUT if line not in out]
    if missing:
        raise PackageCheckError(f"the quickstart did not print {missing}; it printed:\n{out}")
    if status != 0:
        server_log = log.read_text(errors="replace")
        raise PackageCheckError(f"the server exited {status} on SIGTERM; its log:\n{server_log}")


def test_requirements() -> list[str]:
    """The dev extra's requirements of :data:`TEST_TOOLS`, as pyproject.toml pins them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = project["project"]["optional-dependencies"]["dev"]
    wanted = [
        spec for spec in dev if re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower() in TEST_TOOLS
    ]
    if len(wanted) != len(TEST_TOOLS):
        raise PackageCheckError(f"the dev extra names {wanted}, not all of {TEST_TOOLS}")
    return wanted


def run_tests(bin_dir: Path, work: Path, wheel: Path, *, compiled: bool) -> None:
    """:data:`TEST_SUBSET` on 4 processes against the installed wheel (the test
    dependencies added to its environment)."""
    python = bin_dir / "python"
    extras = f"udpchat-proto[{TEST_EXTRAS}] @ {wheel.as_uri()}"
    install_tests: list[str | Path] = [python, "-m", "pip", "install", "--quiet", extras]
    run([*install_tests, *test_requirements()], cwd=work, timeout=INSTALL_TIMEOUT)
    env = clean_env(UDPCHAT_TEST_BUILD="compiled" if compiled else "pure")
    # (The services' requirement, as CI sets it: a test that needs PostgreSQL fails.)
    if os.environ.get("UDPCHAT_REQUIRE_SERVICES"):
        env["UDPCHAT_REQUIRE_SERVICES"] = os.environ["UDPCHAT_REQUIRE_SERVICES"]
    # From the checkout (its tests and pyproject.toml's pytest options), whose src/ is
    # not on the path: ``udpchat_proto`` is the wheel's.
    command: list[str | Path] = [python, "-m", "pytest", "-n", "4", "-q", "-p", "no:cacheprovider"]
    out = run([*command, *TEST_SUBSET], cwd=ROOT, timeout=TEST_TIMEOUT, env=env)
    print("   " + (out.strip().splitlines() or [""])[-1], flush=True)


def check(work: Path, *, compiled: bool, tests: bool) -> None:
    version = source_version()
    kind = "compiled" if compiled else "pure"
    with step(f"build the sdist and the {kind} wheel (version {version})"):
        sdist, wheel = build(work / "dist", version, compiled=compiled)
    with step("what the sdist and the wheel hold"):
        check_sdist(sdist, version)
        check_wheel(wheel, version, compiled=compiled)
    with step("install the wheel into a fresh virtual environment"):
        bin_dir = install(work, wheel)
    with step("the base install: what it pulls, the commands that need an extra"):
        check_base_install(bin_dir, work)
    with step("both tools' --version"):
        check_versions(bin_dir, work, version, compiled=compiled)
    with step("the README's quickstart against the installed wheel"):
        quickstart(bin_dir, work)
    if tests:
        with step(f"the tests of the hot path against the installed {kind} wheel"):
            run_tests(bin_dir, work, wheel, compiled=compiled)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory and say where"
    )
    parser.add_argument(
        "--pure", action="store_true", help="build the pure-Python wheel (no C compiler needed)"
    )
    parser.add_argument(
        "--tests", action="store_true", help="then run the hot path's tests against the wheel"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="udpchat-wheel-"))
    try:
        check(work, compiled=not args.pure, tests=args.tests)
    except PackageCheckError as exc:
        print(f"wheel check failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wheel check passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
