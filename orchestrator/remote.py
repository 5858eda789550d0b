"""A run store on a shared or cloud filesystem (pyarrow): ``s3://``, ``gs://``, ``hdfs://``...

Components read and write plain local files, so a remote store is two things: the remote (the
truth, shared by every node) and a local staging mirror on each machine
(``$ORCH_STAGING_DIR/<hash of the URI>``, default ``~/.cache/orch/stores/<hash>``) where nodes run
exactly as on a local store. This module owns the transfers; ``Store`` decides what moves when.

Credentials come from the environment of each process (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``GOOGLE_APPLICATION_CREDENTIALS``, instance roles...) and are never
written anywhere: a URI that carries them (``s3://KEY:SECRET@bucket``) is refused. Query parameters
(``?endpoint_override=host:port&scheme=http``) go to pyarrow's filesystem as they are.

pyarrow is imported on first use, never when this module is imported.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

STORAGE_HELP = ("give `storage:` (or --storage) a local path, a shared mount every node sees, or a bucket URI "
                "such as s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (see cluster/README.md, 'Storage')")
CREDENTIALS_HELP = ("credentials come from the environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and "
                    "AWS_DEFAULT_REGION) for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://, or the machine's role")


class RemoteError(ValueError):
    """A remote store that cannot be used; the message names the URI and what to do."""


def is_remote_uri(storage: str) -> bool:
    return "://" in storage and not storage.startswith("file://")


def _safe_uri(uri: str) -> str:
    """The URI with any user:password part masked (for messages)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def staging_dir(uri: str) -> Path:
    """This machine's local mirror of the store at ``uri``."""
    parts = urlsplit(uri)
    canonical = f"{parts.scheme}://{parts.netloc}/{parts.path.strip('/')}?{urlencode(sorted(parse_qsl(parts.query)))}"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    base = os.environ.get("ORCH_STAGING_DIR") or "~/.cache/orch/stores"
    return Path(base).expanduser().resolve() / digest


@dataclass
class Remote:
    """A folder on a pyarrow filesystem, addressed by paths relative to it ("cache/kind/key/...")."""

    uri: str
    _fs: Any = field(default=None, repr=False, compare=False)
    _base: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.uri)
        if parts.username or parts.password:
            raise RemoteError(f"storage '{_safe_uri(self.uri)}': credentials in the URI are not accepted (they would "
                              f"be written into run records and logs); remove them, {CREDENTIALS_HELP}")
        if not parts.scheme or not (parts.netloc or parts.path.strip("/")):
            raise RemoteError(f"storage '{self.uri}': not a URI with a bucket or path; {STORAGE_HELP}")

    def __getstate__(self) -> dict[str, Any]:  # the filesystem is rebuilt where it is used
        return {"uri": self.uri, "_fs": None, "_base": ""}

    @property
    def fs(self):
        if self._fs is None:
            from pyarrow import fs as pafs

            scheme = urlsplit(self.uri).scheme
            try:
                self._fs, base = pafs.FileSystem.from_uri(self.uri)
            except (ValueError, NotImplementedError) as exc:  # ArrowInvalid / ArrowNotImplementedError
                raise RemoteError(f"storage '{self.uri}': pyarrow cannot open '{scheme}://' URIs ({exc}); "
                                  f"{STORAGE_HELP}") from None
            except OSError as exc:
                raise RemoteError(f"storage '{self.uri}': cannot open it ({exc}); {CREDENTIALS_HELP}") from None
            self._base = base.rstrip("/")
        return self._fs

    @property
    def base(self) -> str:
        self.fs  # noqa: B018 - resolves _base
        return self._base

    def path(self, rel: str | Path = "") -> str:
        rel = str(rel).strip("/")
        return f"{self.base}/{rel}" if rel and rel != "." else self.base

    # -- checks ----------------------------------------------------------------------------
    def probe(self) -> None:
        """Fail early, naming the URI, when the store cannot be reached or its bucket does not exist."""
        from pyarrow import fs as pafs

        fs, base = self.fs, self.base
        bucket = base.split("/", 1)[0]
        try:
            info = fs.get_file_info(bucket if type(fs).__name__ in ("S3FileSystem", "GcsFileSystem") else base)
        except OSError as exc:
            raise RemoteError(f"storage '{self.uri}' cannot be reached: {exc}. Check the endpoint and the network; "
                              f"{CREDENTIALS_HELP}") from None
        if info.type == pafs.FileType.NotFound:
            raise RemoteError(f"storage '{self.uri}': '{info.path}' does not exist; create the bucket (orch never "
                              "creates buckets) or fix the URI")

    def exists(self, rel: str | Path) -> bool:
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def files(self, rel: str | Path = "", recursive: bool = True) -> dict[str, Any]:
        """Files under ``rel``: relative path -> FileInfo (empty when the folder does not exist)."""
        from pyarrow import fs as pafs

        root = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=recursive, allow_not_found=True))
        return {i.path[len(root) + 1:]: i for i in infos if i.type == pafs.FileType.File}

    def dirs(self, rel: str | Path = "") -> list[str]:
        from pyarrow import fs as pafs

        root = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    # -- transfers -------------------------------------------------------------------------
    def upload_file(self, local: Path, rel: str | Path) -> None:
        with open(local, "rb") as src, self.fs.open_output_stream(self.path(rel)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def upload_dir(self, local: Path, rel: str | Path, exclude: Iterable[str] = (), last: Iterable[str] = (),
                   rename: dict[str, str] | None = None) -> int:
        """Upload the files under ``local`` (symlinks skipped); top-level names in ``exclude`` are left
        out, those in ``last`` go after everything else, in their order. Returns the number of files."""
        exclude, last, rename = set(exclude), list(last), rename or {}
        first: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(local):
            here = Path(dirpath)
            top = here == local
            dirnames[:] = [d for d in dirnames if not (top and d in exclude) and not (here / d).is_symlink()]
            for name in filenames:
                p = here / name
                if p.is_symlink() or (top and (name in exclude or name in last)) or name.endswith(".tmp"):
                    continue
                first.append(p)
        ordered = sorted(first) + [local / n for n in last if (local / n).is_file()]
        for p in ordered:
            relp = p.relative_to(local).as_posix()
            self.upload_file(p, f"{str(rel).strip('/')}/{rename.get(relp, relp)}")
        return len(ordered)

    def download_file(self, rel: str | Path, local: Path, info: Any = None) -> None:
        """Download atomically (tmp + rename); the local file takes the remote's mtime."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
        try:
            with self.fs.open_input_stream(self.path(rel)) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if info is not None and info.mtime_ns:
                os.utime(tmp, ns=(info.mtime_ns, info.mtime_ns))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def download_dir(self, rel: str | Path, local: Path, exclude: Iterable[str] = (), last: Iterable[str] = (),
                     only: str = "all") -> int:
        """Download the files under ``rel`` into ``local``; ``exclude``/``last`` as in upload_dir.
        ``only``: "all", "missing" (files absent locally) or "changed" (absent, or size/mtime differ)."""
        exclude, last = set(exclude), list(last)
        found = self.files(rel)
        firsts = sorted(r for r in found if r.split("/", 1)[0] not in exclude and r not in last)
        n = 0
        for r in firsts + [r for r in last if r in found]:
            target = local / r
            info = found[r]
            if only != "all" and target.exists():
                if only == "missing":
                    continue
                st = target.stat()
                if st.st_size == info.size and (not info.mtime_ns or st.st_mtime_ns == info.mtime_ns):
                    continue
            self.download_file(f"{str(rel).strip('/')}/{r}", target, info)
            n += 1
        return n

    def delete(self, rel: str | Path) -> None:
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    def delete_dir(self, rel: str | Path) -> None:
        try:
            self.fs.delete_dir(self.path(rel))
        except FileNotFoundError:
            pass
