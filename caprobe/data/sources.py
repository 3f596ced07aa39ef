"""Read a data set's files from a folder or straight from a tar archive (never unpacked).

A :class:`Source` presents either as a flat list of relative POSIX paths (files and folders),
so layout detection is the same for both. Reads are described by picklable *locators* so that
decoding worker processes can fetch bytes themselves (``os.pread`` on an uncompressed tar).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path, PurePosixPath

from caprobe.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def is_archive(path: Path) -> bool:
    return path.is_file() and (path.name.lower().endswith(TAR_SUFFIXES)
                               or tarfile.is_tarfile(path))


class Source:
    """Files under one root: a folder or an archive."""

    path: Path
    files: list[str]
    dirs: set[str]

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def locator(self, name: str) -> tuple:
        """A picklable description of where ``name``'s bytes are, for :func:`read_locator`."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A fast fingerprint of the content (names, sizes, mtimes); changes when files do."""
        raise NotImplementedError

    def display(self, name: str = "") -> str:
        """``name`` as the user would find it (``archive.tar:inner/path`` or a file path)."""
        raise NotImplementedError

    def children(self, folder: str) -> tuple[list[str], list[str]]:
        """Immediate (sub-folders, files) of ``folder`` ('' = root), sorted."""
        prefix = folder.rstrip("/") + "/" if folder else ""
        subdirs = sorted({d[len(prefix):].split("/", 1)[0] for d in self.dirs
                          if d.startswith(prefix) and d != folder and d[len(prefix):]})
        files = sorted(f for f in self.files if f.startswith(prefix) and "/" not in f[len(prefix):])
        return subdirs, files


class FolderSource(Source):
    def __init__(self, path: Path):
        self.path = path
        self.files, self.dirs, self._stats = [], set(), []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel = os.path.relpath(dirpath, path)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            if rel:
                self.dirs.add(rel)
            for fn in sorted(filenames):
                name = f"{rel}/{fn}" if rel else fn
                self.files.append(name)
        self.files.sort()

    def read(self, name: str) -> bytes:
        with open(self.path / name, "rb") as f:
            return f.read()

    def locator(self, name: str) -> tuple:
        return ("file", str(self.path / name))

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"folder:{self.path.resolve()}".encode())
        for name in self.files:
            try:
                st = os.stat(self.path / name)
            except OSError:
                continue
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def display(self, name: str = "") -> str:
        return str(self.path / name) if name else str(self.path)


class TarSource(Source):
    def __init__(self, path: Path):
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - kept open for reads
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot read archive {path} ({exc}); check the file is a complete "
                            "tar archive or point --data-dir at an unpacked folder") from None
        self.compressed = _is_compressed(path)
        self._members: dict[str, tarfile.TarInfo] = {}
        self.files, self.dirs = [], set()
        for m in members:
            name = str(PurePosixPath(m.name.lstrip("./") or "."))
            if name in (".", ""):
                continue
            parts = name.split("/")
            for i in range(1, len(parts)):
                self.dirs.add("/".join(parts[:i]))
            if m.isdir():
                self.dirs.add(name)
            elif m.isreg():
                self._members[name] = m
                self.files.append(name)
        self.files.sort()
        self._names = {id(m): name for name, m in self._members.items()}
        self._contents: dict[str, bytes] | None = None

    def read(self, name: str) -> bytes:
        if self.compressed:
            # a compressed stream cannot seek back cheaply: read everything once, in order
            if self._contents is None:
                self._contents = {}
                for m in sorted(self._members.values(), key=lambda m: m.offset_data):
                    f = self._tar.extractfile(m)
                    assert f is not None
                    self._contents[self._names[id(m)]] = f.read()
            return self._contents[name]
        f = self._tar.extractfile(self._members[name])
        assert f is not None
        return f.read()

    def locator(self, name: str) -> tuple:
        m = self._members[name]
        if self.compressed:
            return ("bytes", self.read(name))
        return ("tar", str(self.path), m.offset_data, m.size)

    def fingerprint(self) -> str:
        st = os.stat(self.path)
        return hashlib.sha256(
            f"tar:{self.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()

    def display(self, name: str = "") -> str:
        return f"{self.path}:{name}" if name else str(self.path)

    def close(self) -> None:
        self._tar.close()


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        magic = f.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00"


def open_source(path: Path) -> Source:
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        return TarSource(path)
    raise DataError(f"{path} does not exist")


def read_locator(loc: tuple) -> bytes:
    kind = loc[0]
    if kind == "file":
        with open(loc[1], "rb") as f:
            return f.read()
    if kind == "tar":
        fd = os.open(loc[1], os.O_RDONLY)
        try:
            return os.pread(fd, loc[3], loc[2])
        finally:
            os.close(fd)
    if kind == "bytes":
        return loc[1]
    raise ValueError(f"unknown locator {kind!r}")


def quick_fingerprint(path: Path) -> tuple[str, Source | None]:
    """Fast content fingerprint of a folder (names, sizes, mtimes) or archive (its stat).

    A folder is walked once; the resulting :class:`FolderSource` is returned for reuse.
    """
    if path.is_dir():
        source = FolderSource(path)
        return source.fingerprint(), source
    st = os.stat(path)
    return hashlib.sha256(
        f"file:{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest(), None
