"""Where training exports are published: a local directory or an S3-compatible bucket.

An export writes its Parquet files and manifest to a local working directory, then:

- `stage` (before the export's transaction commits) makes them durable in the target's
  staging area, `.partial-<export id>` (names starting with `.` are skipped by pyarrow and
  Spark): for a directory the working directory *is* the staging area; for a bucket the files
  are uploaded under `prefix/.partial-<export id>/`, the manifest last;
- `publish` (after the commit) puts them at their final name, `<export id>`: a directory is
  renamed (atomic); in a bucket each object is copied server side, the manifest last, and the
  staged objects are deleted in one batch. A reader that waits for `_manifest.json` therefore
  never sees a partial export, in either target;
- `discard` (on failure) removes what was written and staged.

`staged_exports`, `publish_staged` and `discard_staged` let the next export finish what a
killed one left (`training_exports.finish_interrupted_exports`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import obstore

from control_plane.adapters.s3_blobstore import call_object_store, list_object_names, open_s3_store

STAGING_PREFIX = ".partial-"
"""An export is staged as `.partial-<export id>` and published as `<export id>`."""
MANIFEST_NAME = "_manifest.json"
"""Leading underscore: pyarrow and Spark skip it, so `pq.read_table(directory)` reads the data alone."""


class ExportTarget(Protocol):
    """Where exports are staged and published; see the module docstring for the protocol."""

    def location(self, export_id: UUID) -> str:
        """Where the published export lives: a directory path or an `s3://` URL."""
        ...

    def begin(self, export_id: UUID) -> Path:
        """Creates and returns the local directory the export writes its files to."""
        ...

    def stage(self, export_id: UUID, directory: Path, names: Sequence[str]) -> None:
        """Makes the files `names` of `directory` durable in the staging area, in that order."""
        ...

    def publish(self, export_id: UUID, directory: Path) -> None:
        """Puts the staged export at its final location and removes the working directory."""
        ...

    def discard(self, export_id: UUID, directory: Path) -> None:
        """Removes the working directory and anything staged of the export."""
        ...

    def staged_exports(self) -> list[UUID]:
        """Exports that are staged but not published (running, or left by a killed process)."""
        ...

    def publish_staged(self, export_id: UUID) -> None:
        """Publishes a staged export (of a committed export a killed process left)."""
        ...

    def discard_staged(self, export_id: UUID) -> None:
        """Removes a staged export (of an export that never committed)."""
        ...


def open_export_target(output: str | Path, overrides: Mapping[str, Any] | None = None) -> ExportTarget:
    """The target `output` names: `s3://bucket/prefix`, else a local directory (created if missing).

    Args:
        output: A directory path, or an `s3://` URL (configured from the `AWS_*` settings).
        overrides: obstore settings winning over the environment (S3 only; tests).

    Raises:
        ValueError: A malformed `s3://` URL.
        OSError: The directory cannot be created.
    """
    if isinstance(output, str) and output.startswith("s3://"):
        return S3ExportTarget(output, overrides)
    return LocalExportTarget(Path(output))


class LocalExportTarget:
    """Exports as directories of `output_dir`, staged under a hidden name and renamed when committed."""

    def __init__(self, output_dir: Path) -> None:
        """Uses (and creates) `output_dir`."""
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)

    def location(self, export_id: UUID) -> str:
        """See `ExportTarget.location`."""
        return str(self.output_dir / str(export_id))

    def begin(self, export_id: UUID) -> Path:
        """See `ExportTarget.begin`: the staging directory itself."""
        directory = self._staging(export_id)
        directory.mkdir(exist_ok=False)
        return directory

    def stage(self, export_id: UUID, directory: Path, names: Sequence[str]) -> None:
        """See `ExportTarget.stage`: the files are written in place already."""

    def publish(self, export_id: UUID, directory: Path) -> None:
        """See `ExportTarget.publish`: one atomic rename."""
        self.publish_staged(export_id)

    def discard(self, export_id: UUID, directory: Path) -> None:
        """See `ExportTarget.discard`."""
        shutil.rmtree(directory, ignore_errors=True)

    def staged_exports(self) -> list[UUID]:
        """See `ExportTarget.staged_exports`."""
        return _export_ids(path.name for path in self.output_dir.glob(f"{STAGING_PREFIX}*"))

    def publish_staged(self, export_id: UUID) -> None:
        """See `ExportTarget.publish_staged`."""
        final = self.output_dir / str(export_id)
        # A rename is atomic: readers see no directory or the whole export. Another process may
        # have published it already (it found this export committed after a crash of ours).
        try:
            os.rename(self._staging(export_id), final)
        except FileNotFoundError:
            if not final.is_dir():
                raise
        descriptor = os.open(self.output_dir, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def discard_staged(self, export_id: UUID) -> None:
        """See `ExportTarget.discard_staged`."""
        shutil.rmtree(self._staging(export_id), ignore_errors=True)

    def _staging(self, export_id: UUID) -> Path:
        return self.output_dir / f"{STAGING_PREFIX}{export_id}"


class S3ExportTarget:
    """Exports as object prefixes of a bucket: written locally, uploaded to a staging prefix
    before the commit, copied to the final prefix (manifest last) after it."""

    def __init__(self, url: str, overrides: Mapping[str, Any] | None = None) -> None:
        """Publishes under `url` (`s3://bucket/prefix`); see `s3_blobstore.open_s3_store`."""
        self.url = url.rstrip("/")
        self.store = open_s3_store(url, overrides)

    def location(self, export_id: UUID) -> str:
        """See `ExportTarget.location`."""
        return f"{self.url}/{export_id}"

    def begin(self, export_id: UUID) -> Path:
        """See `ExportTarget.begin`: a private temporary directory."""
        return Path(tempfile.mkdtemp(prefix=f"atelier-export-{export_id}-"))

    def stage(self, export_id: UUID, directory: Path, names: Sequence[str]) -> None:
        """See `ExportTarget.stage`: one upload per file (multipart when large)."""
        for name in names:
            key = f"{STAGING_PREFIX}{export_id}/{name}"
            call_object_store("put", partial(obstore.put, self.store, key, directory / name))

    def publish(self, export_id: UUID, directory: Path) -> None:
        """See `ExportTarget.publish`."""
        self.publish_staged(export_id)
        shutil.rmtree(directory, ignore_errors=True)

    def discard(self, export_id: UUID, directory: Path) -> None:
        """See `ExportTarget.discard`."""
        shutil.rmtree(directory, ignore_errors=True)
        self.discard_staged(export_id)

    def staged_exports(self) -> list[UUID]:
        """See `ExportTarget.staged_exports`."""
        listing = call_object_store("list", partial(obstore.list_with_delimiter, self.store))
        return _export_ids(prefix.rstrip("/").rsplit("/", 1)[-1] for prefix in listing["common_prefixes"])

    def publish_staged(self, export_id: UUID) -> None:
        """See `ExportTarget.publish_staged`: copies, manifest last, then one batched delete."""
        staging = f"{STAGING_PREFIX}{export_id}/"
        staged = self._keys(staging)
        # The manifest last: once it is there, every file it lists is.
        staged.sort(key=lambda key: key.endswith(f"/{MANIFEST_NAME}"))
        for key in staged:
            target = f"{export_id}/{key.removeprefix(staging)}"
            call_object_store("copy", partial(obstore.copy, self.store, key, target))
        if staged:
            call_object_store("delete", partial(obstore.delete, self.store, staged))

    def discard_staged(self, export_id: UUID) -> None:
        """See `ExportTarget.discard_staged`."""
        staged = self._keys(f"{STAGING_PREFIX}{export_id}/")
        if staged:
            call_object_store("delete", partial(obstore.delete, self.store, staged))

    def _keys(self, prefix: str) -> list[str]:
        return list_object_names(self.store, prefix)


def _export_ids(names: Iterable[str]) -> list[UUID]:
    ids = []
    for name in sorted(names):
        if not name.startswith(STAGING_PREFIX):
            continue  # a published export, or not ours
        try:
            ids.append(UUID(name.removeprefix(STAGING_PREFIX)))
        except ValueError:
            continue  # not ours
    return ids
