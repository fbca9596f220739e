"""Moving images in and out as files: OCI archives, ``docker save`` archives, plain root-filesystem tarballs."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import platform as _platform
import posixpath
import shlex
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from zlayer.errors import ImageError, shown
from zlayer.images.manifest import (
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    check_size,
    parse_json,
    parse_manifest,
    size_text,
)
from zlayer.images.store import ImageStore, Lease, LocalImage
from zlayer.images.unpack import UnpackBudget, layer_diff_id
from zlayer.limits import load_json

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
INDEX_TYPES = (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
REF_ANNOTATION = "org.opencontainers.image.ref.name"
NAME_ANNOTATION = "io.containerd.image.name"
MAX_INDEX_DEPTH = 4  # an index of indexes of ...: real layouts nest one deep at most


def host_arch() -> str:
    machine = _platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _layer_media_type(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return OCI_LAYER_GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER_ZSTD
    return OCI_LAYER_TAR


def _member_name(name: str) -> str | None:
    """Where a member lands once the archive is extracted, as ``docker load``, podman and skopeo read archives (they
    extract them first): ``./index.json``, ``/index.json`` and ``a/../index.json`` are ``index.json``; a name that
    climbs out (``../x``) lands nowhere they would look."""
    clean = posixpath.normpath(name.lstrip("/"))
    if clean in (".", "..") or clean.startswith("../"):
        return None
    return clean


class _Archive:
    """An image archive's members by the name they have once extracted (a later entry replaces an earlier one, as
    extraction does); every read error is an ImageError naming the archive."""

    def __init__(self, path: Path) -> None:
        self.source = str(path)
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by __exit__ (or below on error)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ImageError(f"{path}: not a tar archive ({e})") from e
        try:
            with self.reading():
                for member in self.tar:
                    name = _member_name(member.name)
                    if name is not None:
                        self.members[name] = member
        except BaseException:
            self.tar.close()
            raise

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tar.close()

    @contextlib.contextmanager
    def reading(self, what: str = "") -> Iterator[None]:
        try:
            yield
        except (tarfile.TarError, EOFError, zlib.error) as e:
            where = f" ({what})" if what else ""
            raise ImageError(f"{self.source}: the archive is corrupt or truncated{where}: {e}") from e

    def open(self, name: str, what: str) -> IO[bytes]:
        """The content of member ``name`` (a ``what``: 'blob sha256:...', 'index.json', ...)."""
        member = self.members.get(_member_name(name) or "")
        if member is None:
            raise ImageError(f"{self.source}: archive has no {what}")
        with self.reading(what):
            f = self.tar.extractfile(member)
        if f is None:
            raise ImageError(f"{self.source}: {what} is not a file")
        return f

    def read(self, name: str, what: str, limit: int) -> bytes:
        """The whole of a small member (a manifest, an index, a config), refused when longer than ``limit``."""
        member = self.members.get(_member_name(name) or "")
        if member is not None and member.size > limit:
            raise ImageError(
                f"{self.source}: {what} is {size_text(member.size)}, more than the {size_text(limit)} allowed"
            )
        f = self.open(name, what)
        with self.reading(what):
            return f.read(limit + 1)[:limit]

    def document(self, name: str, what: str, desc: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
        """A manifest or index (checked by :func:`parse_manifest`) and its bytes; one a descriptor points at must
        match the descriptor's digest and size."""
        body = self.read(name, what, MAX_MANIFEST_BYTES)
        if desc is not None:
            check_size(desc["digest"], desc["size"], len(body))
            got = "sha256:" + hashlib.sha256(body).hexdigest()
            if got != desc["digest"]:
                raise ImageError(f"{self.source}: {what} does not match its digest (got {got})")
        return parse_manifest(body, f"{self.source}: {what}"), body

    def kind(self) -> str:
        """'oci', 'docker' or 'rootfs', from the top-level entries; a layout packed inside one directory is refused
        (docker load and podman load do not read it either) with the command that packs it as they expect."""
        if "oci-layout" in self.members and "index.json" in self.members:
            return "oci"
        if "manifest.json" in self.members:
            return "docker"
        tops = {name.split("/", 1)[0] for name in self.members}
        if len(tops) == 1:
            top = tops.pop()
            if f"{top}/index.json" in self.members or f"{top}/manifest.json" in self.members:
                raise ImageError(
                    f"{self.source}: the image layout is inside the directory {top}/ of the archive, not at its top",
                    hint=f"pack the directory's contents: tar -C {top} -cf IMAGE.tar .",
                )
        return "rootfs"


def detect_kind(path: Path) -> str:
    """'oci', 'docker' or 'rootfs', from the archive's top-level entries."""
    with _Archive(path) as archive:
        return archive.kind()


def _blob_name(digest: str) -> str:
    algo, _, value = str(digest).partition(":")
    return f"blobs/{algo}/{value}"


def _select_manifest(
    archive: _Archive, index: dict[str, Any], depth: int = 0
) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(manifest, its bytes, its descriptor) of the host's platform, through nested indexes."""
    arch = host_arch()
    candidates = index.get("manifests") or []
    if not candidates:
        raise ImageError(f"{archive.source}: index.json lists no image")
    for desc in candidates:
        if desc.get("mediaType") in INDEX_TYPES:
            if depth >= MAX_INDEX_DEPTH:
                raise ImageError(f"{archive.source}: indexes nest more than {MAX_INDEX_DEPTH} deep")
            nested, _ = archive.document(_blob_name(desc["digest"]), f"index {desc['digest']}", desc)
            return _select_manifest(archive, nested, depth + 1)
    plat = [d for d in candidates if _platform_of(d).get("architecture") in (None, arch)]
    if not plat:
        found = ", ".join(f"{_platform_of(d).get('os')}/{_platform_of(d).get('architecture')}" for d in candidates)
        raise ImageError(f"{archive.source}: no image for linux/{arch}; the archive has {found}")
    desc = plat[0]
    manifest, body = archive.document(_blob_name(desc["digest"]), f"manifest {desc['digest']}", desc)
    if "config" not in manifest:
        raise ImageError(f"{archive.source}: manifest {desc['digest']} is not an image manifest")
    return manifest, body, desc


def _platform_of(desc: dict[str, Any]) -> dict[str, Any]:
    plat = desc.get("platform")
    return plat if isinstance(plat, dict) else {}


def _copy_blob(store: ImageStore, archive: _Archive, desc: dict[str, Any], lease: Lease) -> None:
    """Copy the blob a descriptor names into the store: its member must have the descriptor's size (checked before
    a byte is read) and digest."""
    digest, size = desc["digest"], desc["size"]
    what = f"blob {digest}"
    member = archive.members.get(_blob_name(digest))
    if member is not None and member.isfile():
        check_size(digest, size, member.size)
    f = archive.open(_blob_name(digest), what)
    with archive.reading(what):
        store.put_blob_stream(f, expected=digest, size=size, lease=lease)  # type: ignore[arg-type]


def _unnamed(source: str) -> ImageError:
    return ImageError(f"{source}: the archive does not name its image", hint="name it: zlayer import FILE -t NAME")


def _oci_image(
    store: ImageStore, archive: _Archive, tag: str | None, lease: Lease
) -> tuple[str, dict[str, Any], bytes]:
    index, _ = archive.document("index.json", "index.json")
    manifest, body, desc = _select_manifest(archive, index)
    found = desc.get("annotations")
    annotations: dict[str, Any] = found if isinstance(found, dict) else {}
    ref = annotations.get(REF_ANNOTATION)
    if isinstance(ref, str) and ":" not in ref and "/" not in ref:
        ref = None  # only a tag ('latest'), as skopeo writes it: no name
    name = next((n for n in (tag, annotations.get(NAME_ANNOTATION), ref) if isinstance(n, str) and n), None)
    if not name:
        raise _unnamed(archive.source)
    for blob in [manifest["config"], *manifest.get("layers", [])]:
        _copy_blob(store, archive, blob, lease)
    return str(name), manifest, body


def _docker_image(store: ImageStore, archive: _Archive, tag: str | None, lease: Lease) -> tuple[str, dict[str, Any]]:
    body = archive.read("manifest.json", "manifest.json", MAX_MANIFEST_BYTES)
    entries = parse_json(body, f"{archive.source}: manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{archive.source}: manifest.json lists no image")
    entry = entries[0]
    if not isinstance(entry, dict):
        raise ImageError(f"{archive.source}: manifest.json: the image entry is not a JSON object")
    config, layers_, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags")
    if not isinstance(config, str) or not isinstance(layers_ or [], list) or not isinstance(tags or [], list):
        raise ImageError(f"{archive.source}: manifest.json: Config, Layers or RepoTags has the wrong type")
    name = tag or (tags[0] if tags else None)
    if not name:
        raise _unnamed(archive.source)
    config_bytes = archive.read(config, f"config {config}", MAX_CONFIG_BYTES)
    config_digest = store.put_blob(config_bytes, _named_digest(config), lease=lease)
    layers = []
    for layer_name in layers_ or []:
        what = f"layer {layer_name}"
        member = archive.open(str(layer_name), what)
        with archive.reading(what):
            head = member.read(4)
            member.seek(0)
            digest = store.put_blob_stream(member, _named_digest(layer_name), lease=lease)  # type: ignore[arg-type]
        layers.append({"mediaType": _layer_media_type(head), "digest": digest, "size": _blob_size(store, digest)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layers,
    }
    return str(name), manifest


def _named_digest(name: str) -> str | None:
    """The digest a ``docker save`` member's name promises: a config ``<hex>.json`` (docker and skopeo name it by
    its digest) or ``blobs/sha256/<hex>``; a legacy ``<id>/layer.tar`` promises none (its id is not a digest)."""
    clean = _member_name(str(name)) or ""
    hex_ = clean.removesuffix(".json") if "/" not in clean else clean.removeprefix("blobs/sha256/")
    if len(hex_) == 64 and all(c in "0123456789abcdef" for c in hex_):
        return "sha256:" + hex_
    return None


def _blob_size(store: ImageStore, digest: str) -> int:
    return store.blob_path(digest).stat().st_size


def _words(text: str, change: str) -> list[str]:
    """CMD/ENTRYPOINT value: the JSON array form as given, the shell form wrapped in /bin/sh -c."""
    if not text.startswith("["):
        return ["/bin/sh", "-c", text]
    value = load_json(text, where=f"--change {shown(change)}", error=ImageError)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"--change {change!r}: the JSON form must be an array of strings")
    return value


def apply_changes(config: dict[str, Any], changes: list[str]) -> None:
    """Apply ``docker import --change`` instructions (CMD, ENTRYPOINT, ENV, WORKDIR, EXPOSE, USER, LABEL)."""
    for change in changes:
        keyword, _, rest = change.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if not rest:
            raise ImageError(f"--change {change!r}: {keyword or 'instruction'} needs a value")

        if keyword == "CMD":
            config["Cmd"] = _words(rest, change)
        elif keyword == "ENTRYPOINT":
            config["Entrypoint"] = _words(rest, change)
        elif keyword == "ENV":
            pairs = [p.split("=", 1) for p in shlex.split(rest)] if "=" in rest else [rest.split(None, 1)]
            env = [e for e in config.get("Env", [])]
            for pair in pairs:
                if len(pair) != 2:
                    raise ImageError(f"--change {change!r}: ENV needs NAME=value")
                env = [e for e in env if not e.startswith(pair[0] + "=")] + [f"{pair[0]}={pair[1]}"]
            config["Env"] = env
        elif keyword == "WORKDIR":
            config["WorkingDir"] = rest
        elif keyword == "USER":
            config["User"] = rest
        elif keyword == "EXPOSE":
            ports = config.setdefault("ExposedPorts", {})
            for port in rest.split():
                ports[port if "/" in port else f"{port}/tcp"] = {}
        elif keyword == "LABEL":
            labels = config.setdefault("Labels", {})
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                labels[key] = value
        else:
            raise ImageError(
                f"--change {change!r}: unsupported instruction {keyword}",
                hint="use CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE or LABEL",
            )


def _rootfs_image(store: ImageStore, path: Path, changes: list[str], lease: Lease) -> dict[str, Any]:
    """A plain root filesystem tarball becomes a one-layer image, as ``docker import`` makes it."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        layer_digest = store.put_blob_stream(f, lease=lease)
        f.seek(0)
        diff_id = layer_diff_id(f, layer=layer_digest, budget=UnpackBudget(store.limits))
    runtime: dict[str, Any] = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    apply_changes(runtime, changes)
    config = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": host_arch(),
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"zlayer import {path.name}", "comment": "imported from a rootfs tarball"}],
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    layer = {"mediaType": _layer_media_type(head), "digest": layer_digest, "size": _blob_size(store, layer_digest)}
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": store.put_blob(config_bytes, lease=lease),
            "size": len(config_bytes),
        },
        "layers": [layer],
    }


def _with_changes(store: ImageStore, manifest: dict[str, Any], changes: list[str], lease: Lease) -> dict[str, Any]:
    """The manifest of the image with ``--change`` instructions applied to its config."""
    cfg = dict(store.read_json(manifest["config"]["digest"]))
    runtime = dict(cfg.get("config") or {})
    apply_changes(runtime, changes)
    cfg["config"] = runtime
    data = json.dumps(cfg, separators=(",", ":")).encode()
    config = {**manifest["config"], "digest": store.put_blob(data, lease=lease), "size": len(data)}
    return {**manifest, "config": config}


def import_archive(
    store: ImageStore, path: Path, *, tag: str | None = None, changes: list[str] | None = None
) -> LocalImage:
    """Import an OCI archive, a ``docker save`` archive or a root filesystem tarball; ``changes`` (``--change``
    instructions) apply on top. Every blob must match its descriptor's digest and size, and the layers the unpack
    limits of the store. A failed import leaves the store as it was; only a named image is imported."""
    changes = changes or []
    apply_changes({}, changes)  # a bad instruction is refused before anything is read
    with _Archive(path) as archive, store.lease() as lease:
        kind = archive.kind()
        raw: bytes | None = None
        if kind == "oci":
            name, manifest, raw = _oci_image(store, archive, tag, lease)
        elif kind == "docker":
            name, manifest = _docker_image(store, archive, tag, lease)
        elif tag:
            name, manifest = tag, _rootfs_image(store, path, changes, lease)
            changes = []
        else:
            raise _unnamed(archive.source)
        if changes:
            manifest, raw = _with_changes(store, manifest, changes, lease), None
        return store.add_image(name, manifest, raw, lease)


def export_archive(store: ImageStore, reference: str, out: Path, *, compress: bool = False) -> None:
    """Write an OCI archive (oci-layout, index.json, blobs) of a local image, optionally gzip-compressed."""
    image = store.get(reference)
    manifest_bytes = store.blob_path(image.digest).read_bytes()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": image.manifest.get("mediaType", OCI_MANIFEST),
                "digest": image.digest,
                "size": len(manifest_bytes),
                "annotations": {
                    REF_ANNOTATION: image.reference.rsplit(":", 1)[-1] if ":" in image.reference else "latest",
                    "io.containerd.image.name": image.reference,
                },
                "platform": {
                    "os": image.image_config.get("os", "linux"),
                    "architecture": image.image_config.get("architecture", host_arch()),
                },
            }
        ],
    }
    tmp = out.with_name(out.name + ".tmp")
    raw = gzip.open(tmp, "wb", compresslevel=6) if compress else open(tmp, "wb")  # noqa: SIM115
    with raw, tarfile.open(fileobj=raw, mode="w|") as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes("index.json", json.dumps(index).encode())
        seen = set()
        for digest in [
            image.digest,
            image.manifest["config"]["digest"],
            *[d["digest"] for d in image.manifest["layers"]],
        ]:
            if digest in seen:
                continue
            seen.add(digest)
            tar.add(store.blob_path(digest), arcname="blobs/sha256/" + digest.split(":", 1)[1], recursive=False)
    tmp.rename(out)
