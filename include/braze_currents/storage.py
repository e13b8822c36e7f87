"""Read and write small objects in a local folder or under an ``s3://`` prefix.

Staged chunks, dead letters, reports and the ledger all live in such a location, so a single worker
can use a folder and a multi-worker deployment an S3 bucket that every worker reaches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol


def write_all(data: bytes | BinaryIO, out: BinaryIO) -> None:
    """Write bytes, or a binary stream read from where it stands to its end a mebibyte at a time (so
    an object is never held whole)."""
    if isinstance(data, bytes | bytearray | memoryview):
        out.write(data)
    else:
        shutil.copyfileobj(data, out, 1 << 20)


class PendingObject(Protocol):
    """An object being written whose name is known only once it is whole (see :meth:`Store.pending`)."""

    file: BinaryIO

    def publish(self, name: str) -> str:
        """Put the written bytes under ``name``; return where they are."""
        ...

    def discard(self) -> None:
        """Drop what was written (a no-op once published)."""
        ...


class Store(Protocol):
    """A place that holds objects by relative name."""

    uri: str

    def put(self, name: str, data: bytes | BinaryIO) -> str:
        """Write an object from bytes or from a binary file read from where it stands to its end."""
        ...

    def put_if_absent(self, name: str, data: bytes) -> bool: ...

    def pending(self, folder: str) -> PendingObject:
        """A file to write an object to, to be published under a name in ``folder`` when it is whole."""
        ...

    def get(self, name: str) -> bytes: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def delete(self, name: str) -> None: ...

    def child(self, name: str) -> Store: ...


class LocalStore:
    """Objects as files under a folder; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if self.root.resolve() not in (path, *path.parents):
            raise ValueError(f"object name {name!r} leaves the store {self.uri!r}")
        return path

    def _publish(self, name: str, data: bytes | BinaryIO, place: Callable[[str, Path], None]) -> Path:
        """Write ``data`` to a temporary file beside the object, then ``place`` it under its name."""
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                write_all(data, out)
            place(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def put(self, name: str, data: bytes | BinaryIO) -> str:
        return str(self._publish(name, data, os.replace))

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Write an object only if none exists under the name; return whether this call wrote it."""
        try:
            self._publish(name, data, os.link)  # a link fails if the name exists: the first writer wins
        except FileExistsError:
            return False
        return True

    def pending(self, folder: str) -> PendingObject:
        """An unnamed file in ``folder``, given its name when published (see :class:`_LocalPending`)."""
        directory = self._path(folder)
        directory.mkdir(parents=True, exist_ok=True)
        return _LocalPending(self, directory)

    def get(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root.resolve()
        if base.is_file():
            yield prefix
            return
        if not base.is_dir():
            return
        root = self.root.resolve()
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(root).as_posix()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def child(self, name: str) -> LocalStore:
        return LocalStore(self._path(name))


class _LocalPending:
    """A file with no name in the object's folder (Linux ``O_TMPFILE``), linked under its name when
    published, so its bytes are written once; where the file system cannot make one, an unnamed
    temporary file in the same folder, copied when published. Either way nothing is left if the
    process dies first, and nothing but the published object is ever listed."""

    def __init__(self, store: LocalStore, directory: Path) -> None:
        self.store = store
        try:
            self.file: BinaryIO = os.fdopen(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600), "w+b")
            self.linkable = True
        except (AttributeError, OSError):  # no O_TMPFILE here, or not on this file system
            self.file = tempfile.TemporaryFile(dir=directory)
            self.linkable = False

    def publish(self, name: str) -> str:
        path = self.store._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file.flush()
            if not (self.linkable and self._link(path)):
                self.file.seek(0)
                self.store._publish(name, self.file, os.replace)
        finally:
            self.discard()
        return str(path)

    def _link(self, path: Path) -> bool:
        """Give the unnamed file a hidden name beside ``path``, then move it there; False if the
        system will not link it (no /proc, say)."""
        tmp = f".{path.name}.{os.getpid()}-{id(self):x}"
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # A directory descriptor makes os.link use linkat, which follows /proc's link to the file.
            os.link(f"/proc/self/fd/{self.file.fileno()}", tmp, dst_dir_fd=folder, follow_symlinks=True)
        except OSError:
            return False
        else:
            try:
                os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=folder)
        finally:
            os.close(folder)
        return True

    def discard(self) -> None:
        # Closing the unnamed file frees it; an error writing its last bytes does not matter then.
        with contextlib.suppress(OSError):
            self.file.close()


class _S3Pending:
    def __init__(self, store: S3Store) -> None:
        self.store, self.file = store, tempfile.TemporaryFile()

    def publish(self, name: str) -> str:
        self.file.seek(0)
        try:
            return self.store.put(name, self.file)
        finally:
            self.file.close()

    def discard(self) -> None:
        self.file.close()


class S3Store:
    """Objects under ``s3://bucket/prefix`` through a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, name: str) -> str:
        if ".." in name.split("/"):
            raise ValueError(f"object name {name!r} leaves the store {self.uri!r}")
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes | BinaryIO) -> str:
        # A file body is sent in one request, read in pieces (boto3 takes a seekable file as is).
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        return f"s3://{self.bucket}/{self._key(name)}"

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Write an object only if none exists (S3 conditional write); return whether this call wrote it."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise
        return True

    def pending(self, folder: str) -> PendingObject:
        """A local temporary file, sent as the object's body when published."""
        return _S3Pending(self)

    def get(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()

    def exists(self, name: str) -> bool:
        response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(name), MaxKeys=1)
        return any(obj["Key"] == self._key(name) for obj in response.get("Contents", []))

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][cut:]

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def child(self, name: str) -> S3Store:
        return S3Store(self.client, self.bucket, self._key(name.strip("/")))


def open_store(location: str, s3_client: Callable[[], Any] | None = None) -> Store:
    """Open a local folder, or an ``s3://bucket/prefix`` location with the client ``s3_client()`` makes.

    :param location: a folder path or an ``s3://`` URI.
    :param s3_client: a factory for a boto3 S3 client, needed only for ``s3://`` locations.
    """
    if location.startswith("s3://"):
        if s3_client is None:
            raise ValueError(f"location {location!r} is on S3 but no S3 connection was given")
        bucket, _, prefix = location[5:].partition("/")
        if not bucket:
            raise ValueError(f"location {location!r} names no bucket")
        return S3Store(s3_client(), bucket, prefix)
    if "://" in location:
        raise ValueError(f"location {location!r}: only local folders and s3:// are supported")
    return LocalStore(location)
