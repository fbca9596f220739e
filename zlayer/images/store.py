"""The local content store: blobs by digest, unpacked layers by chain ID, names → manifests.

Layout under ``root`` (``<data_dir>/images``)::

    blobs/sha256/<hex>        manifests, configs and layer blobs, each verified (digest and the size its descriptor
                              gives) before it is renamed into place
    layers/<chain-hex>/fs     one unpacked layer in overlayfs form; ``layers/<chain-hex>/diffid`` marks it complete,
                              ``size`` says what it unpacked to (counted against the image's unpack limit)
    repositories.json         reference → manifest digest, rewritten atomically
    leases/<pid>-<id>         what an import or pull in progress holds (:class:`Lease`), flock'ed by its owner
    tmp/                      work in progress, and partial downloads a later pull resumes; ``prune`` removes what
                              is older than ``TMP_GRACE_SECONDS``

What no name and no live lease refers to is garbage: a failed import or pull removes what it brought, and
``prune`` collects the rest.

Every write is write-temp + fsync + rename, so a crash at any point leaves either the old state or the new one.
An exclusive ``flock`` on ``lock`` serialises writers (two pulls of the same image, a pull and a prune).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from zlayer.errors import ConflictError, ImageError, NotFoundError, StoreError
from zlayer.images.manifest import check_limit, check_size, parse_json, size_text
from zlayer.images.reference import Reference, parse_reference
from zlayer.images.unpack import IMAGE_ENV, LAYER_ENV, UnpackBudget, UnpackLimits, chain_ids, unpack_layer
from zlayer.paths import private_dir, write_atomic

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
WASM_CONFIG_TYPE = "application/vnd.wasm.config.v0+json"
TMP_GRACE_SECONDS = 600
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


@dataclass
class LocalImage:
    """An image that is in the store, ready to run."""

    reference: str
    digest: str
    manifest: dict[str, Any]
    image_config: dict[str, Any]
    layer_dirs: list[Path] = field(default_factory=list)
    store_root: Path | None = None

    @property
    def id(self) -> str:
        """The image ID, as Docker defines it: the digest of the image config. Two manifests of one config (the
        same image compressed another way) are one image; ``digest`` is the manifest's, as registries name it."""
        return str(self.manifest["config"]["digest"])

    @property
    def config(self) -> dict[str, Any]:
        """The runtime part of the image config (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts, ...)."""
        cfg = self.image_config.get("config") or {}
        return dict(cfg)

    @property
    def platform(self) -> str:
        os_ = self.image_config.get("os", "linux")
        arch = self.image_config.get("architecture", "amd64")
        variant = self.image_config.get("variant")
        return f"{os_}/{arch}" + (f"/{variant}" if variant else "")

    @property
    def is_wasm(self) -> bool:
        return is_wasm_manifest(self.manifest)

    @property
    def wasm_modules(self) -> list[Path]:
        """The WASM binaries of a WASM artifact, as blob paths in the store (what the WASM runtime loads)."""
        if not self.is_wasm or self.store_root is None:
            return []
        return [
            self.store_root / "blobs" / "sha256" / _hex(d["digest"])
            for d in self.manifest.get("layers", [])
            if _is_wasm_layer(d.get("mediaType", ""))
        ]

    def wasm_layer_path(self, desc: dict[str, Any]) -> Path | None:
        """The blob of one layer descriptor when it is a WASM layer, else None."""
        if self.store_root is None or not _is_wasm_layer(str(desc.get("mediaType", ""))):
            return None
        return self.store_root / "blobs" / "sha256" / _hex(str(desc.get("digest", "")))

    @property
    def wasi_version(self) -> str | None:
        """'preview1' (a core module), 'preview2' (a component) or 'unknown'; None when not a WASM artifact."""
        if not self.is_wasm:
            return None
        kind = str(self.manifest.get("artifactType") or "")
        if "component" in kind:
            return "preview2"
        if "module" in kind:
            return "preview1"
        for path in self.wasm_modules:
            with open(path, "rb") as f:
                head = f.read(8)
            if head[:4] == b"\0asm":
                return "preview1" if head[4:8] == b"\x01\0\0\0" else "preview2"
        return "unknown"

    @property
    def size(self) -> int:
        return sum(int(d.get("size", 0)) for d in self.manifest.get("layers", []))


def _is_wasm_layer(media_type: str) -> bool:
    return (
        media_type.startswith("application/wasm")
        or media_type.startswith("application/vnd.wasm.content.layer.")
        or media_type.endswith("+wasm")
    )


def is_wasm_manifest(manifest: dict[str, Any]) -> bool:
    """A WASM artifact, by artifactType, config media type (``application/vnd.wasm.config.*``) or wasm layers."""
    if "wasm" in str(manifest.get("artifactType") or ""):
        return True
    if str((manifest.get("config") or {}).get("mediaType") or "").startswith("application/vnd.wasm.config."):
        return True
    return any(_is_wasm_layer(str(layer.get("mediaType") or "")) for layer in manifest.get("layers", []))


def _hex(digest: str) -> str:
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ImageError(f"unsupported or malformed digest {digest!r}")
    return value


def _write_all(fd: int, data: bytes, path: str, *, sync: bool = False) -> None:
    """Write all of ``data`` to ``fd`` (and fsync it); a full or failing disk is an ImageError naming ``path``."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}", hint="free space in the data dir") from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """Content-addressed image store; safe against crashes and concurrent writers."""

    def __init__(self, root: Path, limits: UnpackLimits | None = None) -> None:
        self.root = Path(root)
        private_dir(self.root)  # layers hold image files as they are, setuid ones too: no way in for other users
        self.limits = limits or UnpackLimits.from_env()
        for sub in ("blobs", "blobs/sha256", "layers", "tmp", "leases"):
            private_dir(self.root / sub)

    # -- locking and atomic files -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            _fsync_dir(path.parent)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # -- blobs --------------------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_blob(
        self, data: bytes, expected: str | None = None, *, size: int | None = None, lease: Lease | None = None
    ) -> str:
        """Store ``data``, which must have the ``expected`` digest and ``size`` when given (else nothing is stored)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if size is not None:
            check_size(expected or digest, size, len(data))
        if expected is not None and digest != expected:
            raise ImageError(f"blob {expected}: content does not match its digest (got {digest}); discarded")
        if lease is not None:
            lease.hold(digest)
        path = self.blob_path(digest)
        if not path.exists():
            self._write_atomic(path, data)
        return digest

    def put_blob_stream(
        self, src: BinaryIO, expected: str | None = None, *, size: int | None = None, lease: Lease | None = None
    ) -> str:
        """Copy a stream into the store, verifying its digest and, when given, its size: reading stops as soon as the
        stream is longer than ``size``. A mismatch leaves nothing behind."""
        h = hashlib.sha256()
        if expected is not None and lease is not None:
            lease.hold(expected)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        except OSError as e:
            raise StoreError(f"cannot write a blob under {self.root / 'tmp'}: {e.strerror or e}") from e
        try:
            # Errors reading ``src`` (a corrupt archive) pass through as they are; errors writing say where.
            done = 0
            while chunk := src.read(1 << 20 if size is None else min(1 << 20, size - done + 1)):
                done += len(chunk)
                if size is not None and done > size:
                    check_size(expected or "sha256:" + h.hexdigest(), size, size, more=True)
                h.update(chunk)
                _write_all(fd, chunk, tmp)
            _write_all(fd, b"", tmp, sync=True)
            digest = "sha256:" + h.hexdigest()
            if size is not None:
                check_size(expected or digest, size, done)
            if expected is not None and digest != expected:
                raise ImageError(f"blob {expected}: content does not match its digest (got {digest}); discarded")
            self.commit_blob(Path(tmp), digest, lease)
            return digest
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def commit_blob(self, path: Path, digest: str, lease: Lease | None) -> None:
        """Move a verified file of this store's tmp/ into place as blob ``digest`` (held by ``lease`` first)."""
        if lease is not None:
            lease.hold(digest)
        os.rename(path, self.blob_path(digest))

    def check_blob(self, digest: str, size: int) -> None:
        """The blob ``digest`` in the store has this size and digest (before it is sent anywhere)."""
        path = self.blob_path(digest)
        try:
            got = path.stat().st_size
            if got != size:
                raise ImageError(
                    f"blob {digest} in the store is {got} bytes, its descriptor says {size}",
                    hint="the store is damaged: remove the image and pull or import it again",
                )
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError as e:
            raise StoreError(f"blob {digest} is missing from the store", hint="pull or import the image again") from e
        if "sha256:" + h.hexdigest() != digest:
            raise StoreError(f"blob {digest} is corrupt in the store", hint="remove the image and pull it again")

    def check_layer_sizes(self, manifest: dict[str, Any], what: str) -> None:
        """Refuse, before any download, an image whose layers are already larger than the unpack limits allow."""
        total = 0
        for desc in manifest.get("layers", []):
            hint = f"if the image is trusted, raise the limit: {LAYER_ENV} or zlayer serve --max-layer-size"
            check_limit(desc["digest"], desc["size"], self.limits.layer, "layer", hint)
            total += desc["size"]
        if total > self.limits.image:
            raise ImageError(
                f"{what}: its layers are {size_text(total)}, more than the {size_text(self.limits.image)} allowed "
                "for one image",
                hint=f"if the image is trusted, raise the limit: {IMAGE_ENV} or zlayer serve --max-image-size",
            )

    def read_json(self, digest: str) -> dict[str, Any]:
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError as e:
            raise StoreError(f"blob {digest} is missing from the store", hint="pull or import the image again") from e
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"blob {digest} is corrupt in the store", hint="remove the image and pull it again")
        result = parse_json(data, f"blob {digest}")
        if not isinstance(result, dict):
            raise ImageError(f"blob {digest} is not a JSON object")
        return result

    # -- names --------------------------------------------------------------------------------------------------

    def _names(self) -> dict[str, str]:
        try:
            names: dict[str, str] = json.loads((self.root / "repositories.json").read_text())
            return names
        except FileNotFoundError:
            return {}

    def _save_names(self, names: dict[str, str]) -> None:
        self._write_atomic(self.root / "repositories.json", json.dumps(names, indent=1, sort_keys=True).encode())

    def set_name(self, reference: str, manifest_digest: str) -> None:
        ref = str(parse_reference(reference))
        with self.lock():
            names = self._names()
            names[ref] = manifest_digest
            self._save_names(names)

    def resolve(self, reference: str) -> tuple[str, str]:
        """(normalised reference, manifest digest) of a local image, found as Docker finds one: by name, by the full
        manifest digest or image ID, or by a prefix of the image ID (``sha256:`` optional; ``image ls`` shows 12)."""
        names = self._names()
        hex_ = reference.removeprefix("sha256:")
        is_hex = 0 < len(hex_) <= 64 and all(c in "0123456789abcdef" for c in hex_)
        if is_hex and len(hex_) == 64 and reference.startswith("sha256:"):
            for name, digest in sorted(names.items()):
                if digest == reference:
                    return name, digest
        elif not reference.startswith("sha256:"):
            ref = parse_reference(reference)
            key = str(ref)
            if key in names:
                return key, names[key]
            if ref.digest and self.has_blob(ref.digest):
                return key, ref.digest
        if is_hex:
            found = self._by_id(hex_, names)
            ids = {image_id for _, _, image_id in found}
            if len(ids) == 1:
                return found[0][0], found[0][1]
            if ids:
                raise ImageError(
                    f"image ID {reference} is ambiguous: {len(ids)} images have IDs starting with it",
                    hint="give more of its digits (zlayer image ls shows them)",
                )
        raise NotFoundError(f"image {reference} is not in the local store", hint=f"pull it: zlayer pull {reference}")

    def _by_id(self, prefix: str, names: dict[str, str]) -> builtins.list[tuple[str, str, str]]:
        """(name, manifest digest, image ID) of each named image whose ID starts with ``prefix``."""
        found = []
        for name, digest in sorted(names.items()):
            with contextlib.suppress(ImageError, KeyError, TypeError):
                image_id = str(self.read_json(digest)["config"]["digest"])
                if image_id.removeprefix("sha256:").startswith(prefix):
                    found.append((name, digest, image_id))
        return found

    # -- layers -------------------------------------------------------------------------------------------------

    def layer_dir(self, chain_id: str) -> Path:
        return self.root / "layers" / _hex(chain_id) / "fs"

    def layer_complete(self, chain_id: str) -> bool:
        return (self.root / "layers" / _hex(chain_id) / "diffid").is_file()

    def layer_size(self, chain_id: str) -> int:
        """What a complete layer unpacked to (0 for one unpacked before sizes were recorded)."""
        try:
            return int((self.root / "layers" / _hex(chain_id) / "size").read_text())
        except (OSError, ValueError):
            return 0

    def unpack_budget(self, chains: builtins.list[str]) -> UnpackBudget:
        """The unpack budget of an image with these layers, charged with those already unpacked."""
        return UnpackBudget(self.limits, sum(self.layer_size(c) for c in set(chains) if self.layer_complete(c)))

    def unpack_layers(
        self, manifest: dict[str, Any], image_config: dict[str, Any], lease: Lease | None = None
    ) -> builtins.list[Path]:
        """Unpack every layer not already unpacked; returns the layer directories, lowest first."""
        layers = manifest.get("layers", [])
        diff_ids = image_diff_ids(manifest, image_config)
        chains = chain_ids(diff_ids)
        if lease is not None:
            lease.hold(*layer_keys(chains))
        budget = self.unpack_budget(chains)
        dirs = []
        for desc, diff, chain in zip(layers, diff_ids, chains, strict=True):
            if not self.layer_complete(chain):
                self.unpack_one_layer(desc["digest"], diff, chain, budget=budget, lease=lease)
            dirs.append(self.layer_dir(chain))
        return dirs

    def unpack_one_layer(
        self,
        blob_digest: str,
        diff_id: str,
        chain: str,
        source: BinaryIO | None = None,
        work: Path | None = None,
        *,
        budget: UnpackBudget | None = None,
        lease: Lease | None = None,
    ) -> None:
        """Unpack one layer blob of the store into its chain-ID directory (a no-op when another got there first).

        ``source`` streams the blob while it downloads; it must end only once the blob's digest is verified.
        ``work`` names the temporary directory (one a crash left there is replaced); by default a fresh one.
        ``budget`` is the image's (a layer alone is held to the per-layer limit); past it, nothing is kept.
        """
        budget = budget or UnpackBudget(self.limits)
        try:
            if work is None:
                work = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="layer-"))
            else:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(0o700)
        except OSError as e:
            raise StoreError(f"layer {blob_digest}: cannot unpack under {self.root / 'tmp'}: {e.strerror or e}") from e
        try:
            (work / "fs").mkdir()
            os.chmod(work / "fs", 0o755)
            if source is not None:
                got = unpack_layer(source, work / "fs", layer=blob_digest, budget=budget)
            else:
                with open(self.blob_path(blob_digest), "rb") as src:
                    got = unpack_layer(src, work / "fs", layer=blob_digest, budget=budget)
            if got != diff_id:
                raise ImageError(f"layer {blob_digest}: uncompressed content is {got}, the image config says {diff_id}")
            write_atomic(work / "size", str(budget.unpacked.get(blob_digest, 0)), durable=False)
            write_atomic(work / "diffid", diff_id, durable=False)
            final = self.root / "layers" / _hex(chain)
            if lease is not None:
                lease.hold(*layer_keys([chain]))
            with self.lock():
                if (final / "diffid").is_file():
                    return  # someone else unpacked the same layer meanwhile
                if final.exists():
                    shutil.rmtree(final)  # a crash left a partial one
                os.rename(work, final)
                _fsync_dir(final.parent)
        except ImageError as e:
            # The unpacker reports every OSError as a bad tarball; a full or broken disk is not the layer's fault.
            cause = e.__cause__
            if isinstance(cause, OSError) and cause.errno in _DISK_ERRNOS:
                raise StoreError(
                    f"layer {blob_digest}: cannot unpack into {work}: {cause.strerror}",
                    hint="free space in the data dir, then pull again",
                ) from cause
            raise
        except OSError as e:
            raise StoreError(f"layer {blob_digest}: cannot unpack into {work}: {e.strerror or e}") from e
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    def adopt_blob(self, path: Path, digest: str, *, durable: bool = True) -> None:
        """Move a file the caller wrote under ``tmp/`` and whose sha256 it computed while writing (a layer tarball a
        build made) into place as the blob ``digest``; an existing blob of that digest wins. ``durable=False``
        leaves the directory's fsync to a later durable write (a build's image record)."""
        final = self.blob_path(digest)
        try:
            if final.exists():
                path.unlink()
                return
            os.rename(path, final)
            if durable:
                _fsync_dir(final.parent)
        except OSError as e:
            raise StoreError(f"cannot store blob {digest}: {e.strerror or e}") from e

    def adopt_layer(self, work: Path, diff_id: str, chain: str, size: int, *, durable: bool = True) -> None:
        """Make ``work/fs`` (a directory under ``tmp/`` already in overlayfs form, e.g. a build step's upper
        directory) the unpacked layer ``chain``; a complete layer already there wins and ``work`` is removed."""
        final = self.root / "layers" / _hex(chain)
        try:
            write_atomic(work / "size", str(size), durable=False)
            write_atomic(work / "diffid", diff_id, durable=False)
            with self.lock():
                if not (final / "diffid").is_file():
                    if final.exists():
                        shutil.rmtree(final)  # a crash left a partial one
                    os.rename(work, final)
                    if durable:
                        _fsync_dir(final.parent)
        except OSError as e:
            raise StoreError(f"layer {chain}: cannot store {work}: {e.strerror or e}") from e
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    # -- images -------------------------------------------------------------------------------------------------

    def get(self, reference: str) -> LocalImage:
        """The local image for a reference; unpacks any layer a crash left unpacked."""
        name, digest = self.resolve(reference)
        manifest = self.read_json(digest)
        config = self.read_json(manifest["config"]["digest"])
        dirs = [] if is_wasm_manifest(manifest) else self.unpack_layers(manifest, config)
        return LocalImage(
            reference=name, digest=digest, manifest=manifest, image_config=config, layer_dirs=dirs, store_root=self.root
        )

    def add_image(
        self, reference: str | None, manifest: dict[str, Any], raw: bytes | None = None, lease: Lease | None = None
    ) -> LocalImage:
        """Record a manifest whose blobs are all in the store (unpacking its layers) and name it.

        ``raw`` is the manifest exactly as the registry served it: its digest is the image's digest, so it must be
        stored byte for byte (re-serialising it would give the image another identity than the registry's).
        """
        descs = [manifest["config"], *manifest.get("layers", [])]
        if lease is not None:
            lease.hold(*(d["digest"] for d in descs))
        for desc in descs:
            if not self.has_blob(desc["digest"]):
                raise ImageError(f"blob {desc['digest']} is missing; the image is incomplete")
        data = raw if raw is not None else json.dumps(manifest, separators=(",", ":")).encode()
        digest = self.put_blob(data, lease=lease)
        config = self.read_json(manifest["config"]["digest"])
        if not is_wasm_manifest(manifest):
            self.unpack_layers(manifest, config, lease)
        if reference:
            self.set_name(reference, digest)
        return self.get(reference or digest)

    def list(self) -> list[LocalImage]:
        out = []
        for name in sorted(self._names()):
            with contextlib.suppress(ImageError, NotFoundError):
                name_, digest = self.resolve(name)
                manifest = self.read_json(digest)
                cfg = self.read_json(manifest["config"]["digest"])
                out.append(
                    LocalImage(
                        reference=name_, digest=digest, manifest=manifest, image_config=cfg, store_root=self.root
                    )
                )
        return out

    def tag(self, source: str, target: str) -> str:
        _, digest = self.resolve(source)
        self.set_name(target, digest)
        return str(parse_reference(target))

    def remove(self, reference: str, *, force: bool = False, in_use: set[str] | None = None) -> builtins.list[str]:
        """Untag a reference; returns the names removed. ``in_use`` holds manifest digests of running containers."""
        name, digest = self.resolve(reference)
        if in_use and digest in in_use and not force:
            raise ConflictError(f"image {name} is used by a container", hint="stop the container first or use --force")
        with self.lock():
            names = self._names()
            names.pop(name, None)
            self._save_names(names)
        return [name]

    # -- what is in use, and collecting the rest ------------------------------------------------------------------

    def lease(self, *, downloads: bool = False) -> Lease:
        """A lease for one import or pull: ``with store.lease() as lease:`` (see :class:`Lease`)."""
        return Lease(self, downloads=downloads)

    def _in_use(self, skip: Lease | None = None) -> set[str]:
        """Digests and chain IDs the named images refer to and the live leases (but ``skip``) hold; called under the
        lock. A lease whose owner died (its lock is free) is removed: what only it held is garbage now."""
        keep: set[str] = set()
        for digest in set(self._names().values()):
            with contextlib.suppress(ImageError, KeyError, TypeError, AttributeError):
                manifest = self.read_json(digest)
                keep |= {digest, manifest["config"]["digest"], *(d["digest"] for d in manifest.get("layers", []))}
                if not is_wasm_manifest(manifest):
                    config = self.read_json(manifest["config"]["digest"])
                    keep |= set(layer_keys(chain_ids(image_diff_ids(manifest, config))))
        for path in (self.root / "leases").iterdir():
            if skip is not None and path == skip.path:
                continue
            held = _live_lease(path)
            if held is None:
                path.unlink(missing_ok=True)
            else:
                keep |= held
        return keep

    def _discard(self, keys: set[str], *, downloads: bool = False) -> tuple[int, int, builtins.list[Path]]:
        """Remove these blobs and layers (:func:`layer_keys`); a pull's blobs go back to tmp/ as partial downloads
        when ``downloads``. Under the lock: layer trees are renamed aside and returned, for the caller to delete."""
        count, freed, trees = 0, 0, []
        for key in keys:
            with contextlib.suppress(ImageError, FileNotFoundError):
                if key.startswith(_LAYER):
                    trees.append(Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="discard-")))
                    os.rename(self.root / "layers" / _hex(key[len(_LAYER) :]), trees[-1] / "layer")
                    count += 1
                    continue
                blob = self.blob_path(key)
                size = blob.stat().st_size
                if downloads:
                    os.rename(blob, self.root / "tmp" / f"partial-{_hex(key)}")
                else:
                    blob.unlink()
                    freed += size
                count += 1
        return count, freed, trees

    def prune(self) -> tuple[int, int]:
        """Delete blobs and layers no named image refers to and no import or pull in progress holds, and crash
        leftovers; returns (items, bytes) freed."""
        with self.lock():
            keep = self._in_use()
            present = {"sha256:" + b.name for b in (self.root / "blobs" / "sha256").iterdir()}
            present |= set(layer_keys("sha256:" + d.name for d in (self.root / "layers").iterdir()))
            count, freed, trees = self._discard(present - keep)
            # Work in progress of a running pull is young; anything older is a crash leftover.
            cutoff = time.time() - TMP_GRACE_SECONDS
            for tmp in (self.root / "tmp").iterdir():
                try:  # an import or pull at work removes its own files meanwhile
                    st = tmp.lstat()
                    if st.st_mtime > cutoff:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        trees.append(tmp)
                    else:
                        tmp.unlink()
                        freed += st.st_size
                except FileNotFoundError:
                    continue
                count += 1
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)
        return count, freed


class Lease:
    """What one import or pull in progress holds in the store (containerd's leases).

    Everything it will use or add is held before it looks whether the store has it, so neither ``prune`` nor another
    lease's end can take it away meanwhile. The holds live in ``leases/<name>``, locked while the owner lives: a
    lease whose owner died holds nothing. When the lease ends, what it held that no named image and no other live
    lease refers to is removed: after a failure that is everything it brought, so the store is as it was (a pull's
    downloaded blobs go back to tmp/ as partial downloads, which the next pull of them resumes, or ``prune``
    collects); after a success, the intermediate blobs (a config that ``--change`` replaced).
    """

    def __init__(self, store: ImageStore, *, downloads: bool = False) -> None:
        self.store = store
        self.downloads = downloads
        self._held: set[str] = set()
        leases = store.root / "leases"
        fd, tmp = tempfile.mkstemp(dir=leases, prefix=".new-")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # named once locked: a collector never finds it unlocked while its owner lives
            self.path = leases / f"{os.getpid()}-{Path(tmp).name[5:]}"
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._fd = fd

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the lease, removing what it held that no named image and no other live lease refers to. One step
        under the store's lock: a lease that has collected but still shows its holds would keep another's garbage."""
        if self._fd < 0:
            return
        with self.store.lock():
            gone = self._held - self.store._in_use(skip=self)
            trees = self.store._discard(gone, downloads=self.downloads)[2]
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1
        self._held.clear()
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)

    def hold(self, *keys: str) -> None:
        """Hold these blobs (by digest) and layers (by :func:`layer_keys`) until the lease ends."""
        data = "".join(f"{k}\n" for k in keys).encode()
        with self.store.lock():
            _write_all(self._fd, data, str(self.path))
        self._held.update(keys)


def _live_lease(path: Path) -> set[str] | None:
    """What the lease file at ``path`` holds, or None when its owner is gone."""
    if path.name.startswith(".new-"):
        return set()  # being created: it holds nothing yet
    try:
        f = open(path, "rb")  # noqa: SIM115 - the lock test needs the file object before the with block
    except FileNotFoundError:
        return set()
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return set(f.read().decode("ascii", "replace").split())
        return None


_LAYER = "layer:"


def layer_keys(chains: Iterable[str]) -> builtins.list[str]:
    """How leases name unpacked layers (by chain ID), apart from blobs: a layer's chain ID can be a blob's digest."""
    return [_LAYER + c for c in chains]


def image_diff_ids(manifest: dict[str, Any], image_config: dict[str, Any]) -> builtins.list[str]:
    """The DiffIDs of an image's layers, one per layer of its manifest, each a sha256 digest."""
    layers = manifest.get("layers", [])
    rootfs = image_config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, builtins.list) or len(diff_ids) != len(layers):
        count = len(diff_ids) if isinstance(diff_ids, builtins.list) else 0
        raise ImageError(
            f"image config {manifest['config']['digest']} lists {count} diff_ids but the manifest has {len(layers)} "
            "layers",
            hint="the image is malformed; rebuild or re-push it",
        )
    for diff in diff_ids:
        if not isinstance(diff, str) or len(diff) != 71:
            raise ImageError(f"image config {manifest['config']['digest']}: diff_id {str(diff)[:80]!r} is not a digest")
        _hex(diff)
    return [str(d) for d in diff_ids]


def parse(reference: str) -> Reference:
    return parse_reference(reference)
