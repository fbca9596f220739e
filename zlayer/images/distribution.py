"""Pulling an image into the store and pushing one out: pull policies, platform selection, resume.

The module is not named `pull`: importing it would make `zlayer.images.pull` the module instead of the function.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any, BinaryIO, cast

from zlayer.errors import ImageError, NotFoundError, RegistryError, StoreError
from zlayer.images.archive import host_arch
from zlayer.images.manifest import check_size, parse_manifest
from zlayer.images.reference import parse_reference
from zlayer.images.registry import (
    INDEX_TYPES,
    Credentials,
    Progress,
    RegistryClient,
    _RangeIgnored,
    gather_bounded,
)
from zlayer.images.store import ImageStore, Lease, LocalImage, image_diff_ids, is_wasm_manifest, layer_keys
from zlayer.images.unpack import chain_ids

POLICIES = ("always", "newer", "if_not_present", "never")
# Layers unpacked at once: unpacking waits on the file system (creating inodes) as much as on the CPU.
UNPACK_THREADS = 4


def _platform_tuple(platform: str | None) -> tuple[str, str, str | None]:
    if not platform:
        return "linux", host_arch(), None
    parts = platform.split("/")
    if len(parts) < 2:
        raise ImageError(f"invalid platform {platform!r}: use os/arch[/variant], e.g. linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else None


def select_platform(index: dict[str, Any], platform: str | None, what: str) -> str:
    """The manifest digest for the wanted platform in an index; the error lists the platforms that exist."""
    os_, arch, variant = _platform_tuple(platform)
    found = []
    for desc in index.get("manifests", []):
        plat = desc.get("platform") or {}
        found.append("/".join(p for p in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if p))
        if (
            plat.get("os") == os_
            and plat.get("architecture") == arch
            and (variant is None or plat.get("variant") == variant)
        ):
            return str(desc["digest"])
    want = "/".join(p for p in (os_, arch, variant) if p)
    listed = ", ".join(f for f in found if f and f != "unknown/unknown") or "none"
    raise ImageError(f"{what}: no image for {want}; the registry has {listed}")


def check_image_platform(config: dict[str, Any], platform: str | None, what: str) -> None:
    """A single-platform image must be for the wanted platform (the host's by default); the error says which it is.

    An image config that names no os/architecture is taken as it is: some tools leave them out.
    """
    os_, arch, variant = _platform_tuple(platform)
    have_os, have_arch, have_variant = config.get("os"), config.get("architecture"), config.get("variant")
    if not have_os or not have_arch:
        return
    if have_os == os_ and have_arch == arch and (variant is None or have_variant in (None, variant)):
        return
    have = "/".join(p for p in (have_os, have_arch, have_variant) if p)
    want = "/".join(p for p in (os_, arch, variant) if p)
    raise ImageError(
        f"{what}: no image for {want}; the registry has {have} only",
        hint=f"to pull it anyway (to run under emulation): --platform {have}",
    )


async def _lock_file(path: Path) -> int:
    """flock ``path``; its holder unlinks it when done, so a lock won on an unlinked file is retried on the new one
    (else a waiter on the old file and a newcomer on a new one would both download into the same partial file)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


class _Aborted(Exception):
    """The download feeding a streaming unpack failed or did not start from byte 0."""


class BlobPipe:
    """Lets one reader thread (the layer unpacker) follow a blob's partial file while the download appends to it.

    The download never waits for the reader: it reports what it wrote and the reader catches up from the page
    cache. The reader sees the end of the stream only after :meth:`finish`, which the download calls once the
    blob's digest is verified, so nothing unpacked from an unverified blob is ever committed; after :meth:`abort`
    the reader raises.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fd = -1
        self._written = 0
        self._pos = 0
        self._state = ""  # "", "done" or "abort"
        self.complete = False

    # -- download side (never blocks)
    def start(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with self._cond:
            self._fd = fd
            self._cond.notify_all()

    def wrote(self, n: int) -> None:
        with self._cond:
            self._written += n
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.complete = True
            self._state = "done"
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            if self._state != "done":
                self._state = "abort"
            self._cond.notify_all()

    # -- reader thread side
    def wait_data(self) -> bool:
        """Block until the first bytes are in the file; False when the download ends without feeding this pipe."""
        with self._cond:
            self._cond.wait_for(lambda: (self._written > 0 and self._fd >= 0) or self._state != "")
            return self._written > 0 and self._fd >= 0 and self._state != "abort"

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: self._pos < self._written or self._state != "")
            if self._state == "abort":
                raise _Aborted()
            avail = self._written - self._pos
        if avail == 0:
            return b""
        data = os.pread(self._fd, avail if n < 0 else min(n, avail), self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        with self._cond:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


async def fetch_blob(
    store: ImageStore,
    client: RegistryClient,
    ref: Any,
    desc: dict[str, Any],
    progress: Progress | None,
    sink: BlobPipe | None = None,
    *,
    lease: Lease,
) -> None:
    """Download one blob into the store, resuming a partial download, verifying size and digest while streaming:
    a registry that sends more than the descriptor's size is cut off there.

    A download from byte 0 also feeds ``sink`` (finished once the digest matched); a resumed one leaves it unfed.
    """
    digest, size = desc["digest"], desc["size"]
    await asyncio.to_thread(lease.hold, digest)
    if store.has_blob(digest):
        if progress:
            progress(digest, size, size)
        return
    hex_ = digest.split(":", 1)[1]
    partial = store.root / "tmp" / f"partial-{hex_}"
    lock_fd = await _lock_file(store.root / "tmp" / f"partial-{hex_}.lock")
    try:
        if store.has_blob(digest):  # another pull finished it while we waited
            return
        for _ in range(2):
            h = hashlib.sha256()
            offset = partial.stat().st_size if partial.exists() else 0
            if offset > size:  # junk, or another blob's: start over
                partial.unlink()
                offset = 0
            if offset:
                with open(partial, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            feed = sink if offset == 0 else None
            try:
                if offset == size and size:
                    break  # downloaded whole before (a failed pull kept it): nothing left to fetch
                with open(partial, "ab") as out:
                    if feed is not None:
                        feed.start(partial)
                    done = offset
                    async for chunk in client.blob_chunks(ref, digest, offset, size):
                        out.write(chunk)
                        h.update(chunk)
                        if feed is not None:
                            out.flush()
                            feed.wrote(len(chunk))
                        done += len(chunk)
                        if progress:
                            progress(digest, done, size)
                    out.flush()
                    os.fsync(out.fileno())
                check_size(digest, size, done)
            except _RangeIgnored:
                partial.unlink()
                continue
            except RegistryError:
                raise  # the network: the partial download is kept, and the next pull resumes it
            except ImageError:
                partial.unlink(missing_ok=True)  # the registry sent the wrong size: nothing of it is worth keeping
                raise
            except OSError as e:  # the data dir, not the network (registry errors are RegistryError)
                raise StoreError(
                    f"layer {digest}: cannot write {partial}: {e.strerror or e}",
                    hint="free space in the data dir, then pull again: the download resumes where it stopped",
                ) from e
            break
        got = "sha256:" + h.hexdigest()
        if got != digest:
            partial.unlink(missing_ok=True)
            raise ImageError(f"layer {digest}: downloaded content has digest {got}; discarded", hint="pull again")
        store.commit_blob(partial, digest, lease)
        if feed is not None:
            feed.finish()
        else:  # a streaming unpack a crash interrupted: the blob is whole now and unpacks from the store
            shutil.rmtree(partial.with_name(partial.name + ".unpack"), ignore_errors=True)
    finally:
        os.close(lock_fd)
        with contextlib.suppress(FileNotFoundError):
            (store.root / "tmp" / f"partial-{hex_}.lock").unlink()


async def _thread_done(work: asyncio.Future[Any]) -> Any:
    """The result of work running in a thread. Cancelled (another layer failed), it still waits for the thread to end
    before passing the cancellation on: a thread cannot be stopped, and what it adds to the store must be there
    before the pull's lease collects what the failed pull added."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()
        raise


async def _fetch_and_unpack_layers(
    store: ImageStore,
    client: RegistryClient,
    ref: Any,
    manifest: dict[str, Any],
    progress: Progress | None,
    concurrency: int,
    lease: Lease,
) -> None:
    """Download the layers (``concurrency`` at a time) and unpack them while they download.

    Up to ``UNPACK_THREADS`` layers are unpacked as their bytes arrive (a :class:`BlobPipe` follows the partial
    file); the others unpack from the store once downloaded. Layers go into independent directories keyed by chain
    ID, so they unpack in parallel. A layer whose blob or DiffID does not match leaves nothing behind.
    """
    layers = manifest.get("layers", [])
    if is_wasm_manifest(manifest):  # nothing to unpack: download only
        unique = list({d["digest"]: d for d in layers}.values())
        await gather_bounded(concurrency, [fetch_blob(store, client, ref, d, progress, lease=lease) for d in unique])
        return
    diff_ids = image_diff_ids(manifest, store.read_json(manifest["config"]["digest"]))
    chains = chain_ids(diff_ids)
    await asyncio.to_thread(lease.hold, *layer_keys(chains))
    budget = await asyncio.to_thread(store.unpack_budget, chains)
    downloads = asyncio.Semaphore(concurrency)
    unpacks = asyncio.Semaphore(UNPACK_THREADS)
    fetched: dict[str, asyncio.Task[None]] = {}

    async def fetch(desc: dict[str, Any], diff: str, chain: str) -> None:
        digest = desc["digest"]
        hex_ = digest.split(":", 1)[1]
        fresh = not store.has_blob(digest) and not (store.root / "tmp" / f"partial-{hex_}").exists()
        if not fresh or store.layer_complete(chain) or unpacks.locked():
            async with downloads:
                await fetch_blob(store, client, ref, desc, progress, lease=lease)
            return
        # Unpack while downloading: the layer is extracted into a temporary directory as its bytes arrive and
        # committed only after both the blob digest and the DiffID matched.
        async with unpacks:
            pipe = BlobPipe()

            def unpack() -> None:
                try:
                    # Only the download holding the blob's lock feeds a pipe, so the work dir named after the
                    # partial download is ours once the first bytes arrive (a crash's leftover is replaced).
                    if pipe.wait_data():
                        work = store.root / "tmp" / f"partial-{hex_}.unpack"
                        store.unpack_one_layer(
                            digest, diff, chain, source=cast(BinaryIO, pipe), work=work, budget=budget, lease=lease
                        )
                finally:
                    pipe.close()

            unpacking = asyncio.ensure_future(asyncio.to_thread(unpack))
            try:
                async with downloads:
                    await fetch_blob(store, client, ref, desc, progress, sink=pipe, lease=lease)
            except BaseException:
                pipe.abort()  # the unpacker stops and removes its work; the download's error is what we report
                await asyncio.wait([unpacking])
                if not unpacking.cancelled():
                    unpacking.exception()
                raise
            if not pipe.complete:  # a concurrent pull stored it, or a partial download was resumed
                pipe.abort()
            try:
                await _thread_done(unpacking)
            except _Aborted:
                pass

    async def one(desc: dict[str, Any], diff: str, chain: str) -> None:
        if desc["digest"] not in fetched:  # a blob listed twice is fetched once
            fetched[desc["digest"]] = asyncio.ensure_future(fetch(desc, diff, chain))
        await fetched[desc["digest"]]
        if store.layer_complete(chain):
            return
        async with unpacks:
            unpack = functools.partial(store.unpack_one_layer, desc["digest"], diff, chain, budget=budget, lease=lease)
            await _thread_done(asyncio.ensure_future(asyncio.to_thread(unpack)))

    tasks = [
        asyncio.ensure_future(one(desc, diff, chain))
        for desc, diff, chain in zip(layers, diff_ids, chains, strict=True)
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in [*tasks, *fetched.values()]:
            t.cancel()
        await asyncio.gather(*tasks, *fetched.values(), return_exceptions=True)


async def pull(
    store: ImageStore,
    reference: str,
    *,
    policy: str = "if_not_present",
    platform: str | None = None,
    credentials: Credentials | None = None,
    insecure: tuple[str, ...] = (),
    progress: Progress | None = None,
    concurrency: int = 4,
) -> LocalImage:
    """Make ``reference`` available locally according to ``policy`` (always, newer, if_not_present, never)."""
    if policy not in POLICIES:
        raise ImageError(f"unknown pull policy {policy!r}; use one of {', '.join(POLICIES)}")
    ref = parse_reference(reference)
    local: LocalImage | None = None
    with contextlib.suppress(NotFoundError):
        local = store.get(str(ref))
    if policy == "never":
        if local is None:
            raise NotFoundError(f"image {reference} is not in the local store and pull_policy is never")
        return local
    if policy == "if_not_present" and local is not None:
        return local
    async with RegistryClient(
        ref.registry if ref.registry != "docker.io" else ref.api_registry, credentials=credentials, insecure=insecure
    ) as client:
        if policy == "newer" and local is not None:
            remote = await client.head_manifest_digest(ref)
            if remote == local.digest:
                return local
        body, media, digest = await client.manifest(ref)
        manifest = parse_manifest(body, f"image {reference}: manifest {digest}")
        if media in INDEX_TYPES or manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            chosen = select_platform(manifest, platform, f"image {reference}")
            desc = next(d for d in manifest["manifests"] if d["digest"] == chosen)
            body, media, digest = await client.manifest(ref, chosen, size=desc["size"])
            manifest = parse_manifest(body, f"image {reference}: manifest {digest}")
        if "config" not in manifest:
            raise ImageError(f"image {reference}: manifest type {media or 'unknown'} is not supported")
        store.check_layer_sizes(manifest, f"image {reference}")
        # Held until the image is named; if the pull fails, what it added goes (downloads back to partial files).
        lease = await asyncio.to_thread(store.lease, downloads=True)
        try:
            await fetch_blob(store, client, ref, manifest["config"], progress, lease=lease)
            if not is_wasm_manifest(manifest):
                check_image_platform(store.read_json(manifest["config"]["digest"]), platform, f"image {reference}")
            await _fetch_and_unpack_layers(store, client, ref, manifest, progress, concurrency, lease)
            await asyncio.to_thread(store.put_blob, body, digest, lease=lease)
            return await asyncio.to_thread(store.add_image, str(ref), manifest, body, lease)
        finally:
            await asyncio.shield(asyncio.to_thread(lease.close))


async def push(
    store: ImageStore,
    reference: str,
    *,
    target: str | None = None,
    credentials: Credentials | None = None,
    insecure: tuple[str, ...] = (),
    concurrency: int = 3,
) -> str:
    """Push a local image (to ``target`` when given); returns the manifest digest."""
    image = store.get(reference)
    ref = parse_reference(target or reference)
    body = store.blob_path(image.digest).read_bytes()
    if "sha256:" + hashlib.sha256(body).hexdigest() != image.digest:
        raise StoreError(f"manifest {image.digest} is corrupt in the store", hint="remove the image and pull it again")
    media = image.manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
    async with RegistryClient(ref.api_registry, credentials=credentials, insecure=insecure) as client:

        async def send(desc: dict[str, Any]) -> None:
            if not await client.blob_exists(ref, desc["digest"]):
                # what leaves the node is what the manifest says: a damaged store is not pushed on
                await asyncio.to_thread(store.check_blob, desc["digest"], desc["size"])
                await client.upload_blob(ref, desc["digest"], store.blob_path(desc["digest"]))

        await gather_bounded(concurrency, [send(d) for d in [image.manifest["config"], *image.manifest["layers"]]])
        await client.put_manifest(ref, body, media)
    return image.digest
