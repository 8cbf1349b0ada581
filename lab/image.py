"""The node image of the docker provider: `meshlab-node:<recipe hash>`, also tagged `meshlab-node:latest`.

What a node needs is small: Python 3.11+ for the agent zipapp, iptables and iproute2 for
capture and faults, openssh-server and sudo for labs that log into nodes, openssl, procps,
ca-certificates, and python3-cryptography so agents make their own keys.

Two recipes make the same image:
* offline (`--offline`, and the default when no registry answers): a Debian bookworm root
  filesystem made with `debootstrap --variant=minbase` from the mirror apt on this machine uses,
  trimmed, packed into a tarball (cached under ~/.cache/meshlab/) and loaded with `docker import`;
* online: `DOCKERFILE`, on an official Python slim image.

The recipe (package list, suite, recipe version) is hashed into the tag and a label, so `build`
does nothing when an image of the current recipe exists. Blocking: call it from a thread in async code.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError, ProvisionError

RECIPE_VERSION = 1  # bump when the build steps change in a way the package list does not show
REPOSITORY = "meshlab-node"
SUITE = "bookworm"
PACKAGES = ("python3", "iptables", "iproute2", "openssh-server", "openssl", "procps", "ca-certificates",
            "sudo",  # ssh hosts in the tests: a login with passwordless sudo (transparent capture without root)
            # debootstrap does not resolve virtual packages: cryptography needs python3-cffi-backend named
            "python3-cryptography", "python3-cffi-backend")
BASE_IMAGE = "python:3.11-slim-bookworm"  # the online recipe's base
RECIPE_LABEL = "meshlab.recipe"
METHOD_LABEL = "meshlab.build"
# Trimmed from the root filesystem: caches, indexes and documentation (copyright files stay).
TRIM = ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*", "usr/share/man/*",
        "usr/share/info/*", "usr/share/locale/*", "usr/share/lintian/*", "var/log/*.log", "var/log/apt/*",
        "etc/ssh/ssh_host_*")  # host keys: every node makes its own (`ssh-keygen -A`) before sshd starts
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

DOCKERFILE = """\
# meshlab node image, online recipe (the offline one is debootstrap: `meshlab image build --offline`)
FROM {base}
RUN apt-get update \\
 && apt-get install -y --no-install-recommends {apt_packages} \\
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/*/changelog* /usr/share/man/* /etc/ssh/ssh_host_* \\
 && pip install --no-cache-dir cryptography
ENV LANG=C.UTF-8
LABEL {recipe_label}={recipe} {method_label}=dockerfile
CMD ["python3"]
"""

Progress = Callable[[str, str], None]


def _quiet(what: str, message: str) -> None:
    pass


@dataclass(frozen=True)
class BuildResult:
    image: str  # meshlab-node:<recipe>
    image_id: str
    built: bool  # False: an image of this recipe was there already
    method: str  # "debootstrap", "dockerfile" or "cached"
    seconds: float
    size_bytes: int
    rootfs_cached: bool = False  # the offline build reused its debootstrap tarball


def recipe_hash() -> str:
    recipe = {"version": RECIPE_VERSION, "suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES),
              "trim": TRIM, "env": ENV, "base": BASE_IMAGE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_tag() -> str:
    """The node image of the current recipe; the docker provider runs this one."""
    return f"{REPOSITORY}:{recipe_hash()}"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meshlab"


def dockerfile() -> str:
    apt = " ".join(p for p in PACKAGES if not p.startswith("python3"))
    return DOCKERFILE.format(base=BASE_IMAGE, apt_packages=apt, recipe_label=RECIPE_LABEL, recipe=recipe_hash(),
                             method_label=METHOD_LABEL)


# -- the Debian mirror apt uses --------------------------------------------------------

def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The URI of the mirror apt on this machine fetches `SUITE` from (sources.list and sources.list.d)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list")),
             *sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uri, suites in entries:
            if SUITE in suites:
                return uri.rstrip("/")
    raise LabError(f"no Debian {SUITE} mirror found in {apt_dir}/sources.list or sources.list.d: "
                   "the offline image build needs one (or pass --mirror URL)")


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] == "deb":
            words = [w for w in words[1:] if not w.startswith("[")]  # skip "[arch=amd64 signed-by=...]"
            if len(words) >= 2:
                yield words[0], [words[1]]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split()


# -- building ---------------------------------------------------------------------------------

def build(offline: bool | None = None, force: bool = False, mirror: str | None = None,
          progress: Progress = _quiet) -> BuildResult:
    """Make sure the node image of the current recipe exists; build it when it does not (or when `force`).

    `offline=None` picks: the Dockerfile when a registry is reachable, debootstrap otherwise.
    """
    from lab.providers.docker import engine  # the provider owns the engine connection and its messages

    started = time.monotonic()
    client = engine()
    tag = image_tag()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with _build_lock():
        existing = _find_image(client, tag)
        if existing is not None and not force:
            client.api.tag(existing.id, REPOSITORY, "latest")
            return BuildResult(tag, existing.id, False, "cached", time.monotonic() - started,
                               existing.attrs.get("Size", 0))
        if offline is None:
            progress("image", "looking for a registry (the engine inspects "
                     f"{BASE_IMAGE}; use --offline to skip this)")
            offline = not _registry_reachable(client)
            progress("image", "offline build: no registry answers" if offline else "a registry answers")
        if offline:
            image_id, rootfs_cached = _build_offline(client, tag, force, mirror, progress)
            method = "debootstrap"
        else:
            image_id, rootfs_cached = _build_dockerfile(client, tag, progress), False
            method = "dockerfile"
        client.api.tag(image_id, REPOSITORY, "latest")
        image = client.images.get(image_id)
        return BuildResult(tag, image.id, True, method, time.monotonic() - started, image.attrs.get("Size", 0),
                           rootfs_cached)


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per cache folder (parallel test sessions share the image)."""
    with open(cache_dir() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _find_image(client: Any, tag: str) -> Any | None:
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    return image if labels.get(RECIPE_LABEL) == recipe_hash() else None


def _registry_reachable(client: Any) -> bool:
    """Whether the online recipe can get its base image: present already, or the engine's registry answers."""
    import docker.errors

    try:
        client.images.get(BASE_IMAGE)
        return True
    except docker.errors.ImageNotFound:
        pass
    try:
        client.api.inspect_distribution(BASE_IMAGE)
        return True
    except (docker.errors.DockerException, OSError):
        return False


def _build_dockerfile(client: Any, tag: str, progress: Progress) -> str:
    import docker.errors

    progress("image", f"docker build on {BASE_IMAGE}")
    with tempfile.TemporaryDirectory(prefix="meshlab-image-") as context:
        (Path(context) / "Dockerfile").write_text(dockerfile())
        try:
            image, _ = client.images.build(path=context, tag=tag, pull=True, rm=True)
        except docker.errors.BuildError as e:
            last = " | ".join(str(chunk.get("stream", chunk.get("error", ""))).strip() for chunk in e.build_log)[-400:]
            raise ProvisionError(f"docker build of the node image failed: {e.msg}: {last} "
                                 "(no registry? try `meshlab image build --offline`)") from None
        except docker.errors.APIError as e:
            raise ProvisionError(f"docker build of the node image failed: {e.explanation or e} "
                                 "(no registry? try `meshlab image build --offline`)") from None
    return str(image.id)


def _build_offline(client: Any, tag: str, force: bool, mirror: str | None, progress: Progress) -> tuple[str, bool]:
    tarball = cache_dir() / f"node-rootfs-{recipe_hash()}.tar"
    cached = tarball.exists() and not force
    if cached:
        progress("image", f"reusing the root filesystem {tarball}")
    else:
        _debootstrap_tarball(tarball, mirror or debian_mirror(), progress)
    progress("image", f"docker import as {tag}")
    changes = ['CMD ["python3"]', *(f"ENV {k}={v}" for k, v in ENV.items()),
               f"LABEL {RECIPE_LABEL}={recipe_hash()} {METHOD_LABEL}=debootstrap"]
    repository, _, version = tag.partition(":")
    import docker.errors

    try:
        answer = client.api.import_image_from_file(str(tarball), repository=repository, tag=version, changes=changes)
    except docker.errors.APIError as e:
        raise ProvisionError(f"docker import of {tarball} failed: {e.explanation or e}") from None
    image = _find_image(client, tag)
    if image is None:
        raise ProvisionError(f"docker import of {tarball} made no image {tag}: {str(answer)[-300:]}")
    return str(image.id), cached


def _debootstrap_tarball(tarball: Path, mirror: str, progress: Progress) -> None:
    """debootstrap a trimmed root filesystem and pack it into `tarball` (atomically)."""
    if shutil.which("debootstrap") is None:
        raise ProvisionError("the offline image build needs debootstrap: `apt-get install debootstrap` "
                             "(scripts/install-docker.sh installs it)")
    if os.geteuid() != 0:
        raise ProvisionError("the offline image build runs debootstrap, which needs root: "
                             "run `sudo meshlab image build --offline` once (the image is cached)")
    log = tarball.with_suffix(".log")
    work = Path(tempfile.mkdtemp(prefix="build-", dir=tarball.parent))
    rootfs = work / "rootfs"
    try:
        progress("image", f"debootstrap --variant=minbase {SUITE} from {mirror} (log: {log})")
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror]
        with open(log, "wb") as out:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            detail = rootfs / "debootstrap" / "debootstrap.log"
            tail = _last_lines(detail if detail.exists() else log, 4)
            raise ProvisionError(f"debootstrap failed (code {done.returncode}): {tail} (log: {log})")
        progress("image", "trimming caches and documentation")
        _trim(rootfs)
        progress("image", f"packing {tarball}")
        partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as out:
            packed = subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                                    stdout=out, stderr=subprocess.PIPE)
        if packed.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ProvisionError(f"packing the root filesystem failed: {packed.stderr.decode(errors='replace')}")
        os.replace(partial, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _trim(rootfs: Path) -> None:
    for pattern in TRIM:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    for doc in (rootfs / "usr/share/doc").glob("*"):  # keep each package's copyright file
        if doc.is_dir() and not doc.is_symlink():
            for item in doc.iterdir():
                if item.name != "copyright":
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def _last_lines(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return " | ".join(lines[-n:])


# -- `meshlab image` ------------------------------------------------------------------------------

def add_verb(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `meshlab image build` with the CLI's `verb` helper."""
    p = verb("image", cmd_image, "build the node image the docker provider runs (cached by recipe)")
    p.add_argument("action", choices=["build"], help="build: make sure the image of the current recipe exists")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--offline", dest="offline", action="store_true", default=None,
                     help="build from a debootstrap root filesystem (default when no registry answers)")
    how.add_argument("--online", dest="offline", action="store_false",
                     help=f"build from the Dockerfile on {BASE_IMAGE} (needs a registry)")
    p.add_argument("--force", action="store_true",
                   help="build again even when the image exists (and debootstrap again)")
    p.add_argument("--mirror", help="Debian mirror for the offline build (default: the one apt uses here)")


def cmd_image(args: argparse.Namespace) -> int:
    from lab.cli.render import Progress as Printer

    result = build(offline=args.offline, force=args.force, mirror=args.mirror,
                   progress=Printer(enabled=not args.json))
    if args.json:
        print(json.dumps(asdict(result), indent=2, sort_keys=True))
    elif result.built:
        reused = ", root filesystem from the cache" if result.rootfs_cached else ""
        print(f"built {result.image} (also {REPOSITORY}:latest) with {result.method}{reused} in "
              f"{result.seconds:.1f}s, {result.size_bytes / 1e6:.0f} MB")
    else:
        print(f"{result.image} is up to date ({result.size_bytes / 1e6:.0f} MB); --force builds it again")
    return 0
