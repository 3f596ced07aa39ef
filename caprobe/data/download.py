"""Opt-in downloads (``--download``) with checksum verification.

CIFAR-10/100: the Toronto site publishes md5s of the python tarballs; the sha256s below are
the ones pinned by torchvision and Keras for the same files. Both are checked. ImageNette
(fast.ai) publishes no checksum: the download is accepted after a size/format check and its
sha256 is printed and recorded, but it cannot be verified against anything. The archive is
kept as downloaded; loaders read tar archives directly.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from caprobe.errors import DataError


@dataclass(frozen=True)
class Remote:
    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    note: str = ""


REMOTES: dict[str, Remote] = {
    "cifar10": Remote(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    "cifar100": Remote(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),
    "imagenette": Remote(
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "imagenette2-160.tgz",
        note="ImageNette publishes no checksum; the sha256 is recorded but not verified"),
}


def file_hashes(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _verify(remote: Remote, md5: str, sha: str) -> str | None:
    if remote.md5 and md5 != remote.md5:
        return f"md5 {md5} != published {remote.md5}"
    if remote.sha256 and sha != remote.sha256:
        return f"sha256 {sha} != expected {remote.sha256}"
    return None


def fetch(remote: Remote, dest_dir: str | os.PathLike, *,
          progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download ``remote`` into ``dest_dir`` (unless a verified copy is there) and return its path.

    The file is streamed to a temporary name, verified, then renamed; a file that fails
    verification is deleted and a :class:`DataError` raised.
    """
    dest_dir = Path(dest_dir).expanduser()
    target = dest_dir / remote.filename
    if target.is_file() and _verify(remote, *file_hashes(target)) is None:
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{remote.filename}.", suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(remote.url, timeout=60) as resp:
                total = resp.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                done = 0
                while block := resp.read(1 << 20):
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"download of {remote.url} failed ({reason}); check the network or "
                            f"put {remote.filename} into {dest_dir} by hand") from None
        problem = _verify(remote, *file_hashes(Path(tmp)))
        if problem is not None:
            raise DataError(f"download of {remote.url} failed verification ({problem}); the "
                            f"file was deleted, retry or put a good copy into {dest_dir}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
