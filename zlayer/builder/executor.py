"""Running a parsed Dockerfile: stage by stage, step by step, each step cached by its inputs.

A step that changes files (RUN, COPY, ADD, and WORKDIR creating its directory on the next of those) runs in a
:class:`~zlayer.builder.snapshot.Snapshot` over its parent's layers and becomes one layer; the others change only
the image config and add a history entry marked ``empty_layer``. A step's cache key is the sha256 of its parent's
key, the instruction as written, the build arguments and environment it sees and, for COPY and ADD, the digest of
what it copies; the key maps to the layer it made (``BUILDER/cache/<key>``). A cache entry whose layer is gone from
the store is a miss; one whose blob is there but not its unpacked directory unpacks it again.

A failure or a cancellation (Ctrl-C, the API) kills the step's container, unmounts every snapshot and removes its
directories before the error goes up; a layer enters the store only whole (tarball, then directory, each renamed
into place), and a cache entry is written only after its layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fnmatch
import functools
import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zlayer.builder.context import BuildContext, FileHashes, tree_digest
from zlayer.builder.dockerfile import (
    Dockerfile,
    Instruction,
    Stage,
    arg_declarations,
    expand,
    key_values,
    parse_instruction,
    split_words,
)
from zlayer.builder.runner import run_step, step_config
from zlayer.builder.snapshot import Layer, Snapshot, chain_of, resolve_in_root
from zlayer.errors import ImageError, NotFoundError, RuntimeFailure, UsageError, ZLayerError, shown
from zlayer.images import ImageStore, LocalImage, mount_rootfs, unmount_rootfs
from zlayer.images.archive import host_arch
from zlayer.images.store import image_diff_ids
from zlayer.images.unpack import chain_ids
from zlayer.paths import private_dir, write_atomic

if TYPE_CHECKING:
    from zlayer.builder.zimage import WasmBuild

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildError(ZLayerError):
    """A build step failed (a RUN's exit code, a base image that cannot be had); the message names the step."""

    code = "build_failed"
    http_status = 422


class Progress(Protocol):
    """What a build reports as it goes (the CLI draws it; the API streams it)."""

    def step(self, stage: str, number: int, total: int, text: str) -> None: ...

    def cached(self) -> None: ...

    def output(self, line: str) -> None: ...

    def done(self, seconds: float) -> None: ...


class QuietProgress:
    def step(self, stage: str, number: int, total: int, text: str) -> None:
        pass

    def cached(self) -> None:
        pass

    def output(self, line: str) -> None:
        pass

    def done(self, seconds: float) -> None:
        pass


@dataclass
class BuildOptions:
    """One build: the context, what to build (see :func:`load_build_file`) and the ``zlayer build`` options."""

    context: Path
    dockerfile: Path | None = None
    dockerfile_text: str | None = None
    zimagefile: Path | None = None
    runtime: str | None = None
    runtime_auto: bool = False
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    no_cache: bool = False
    secrets: dict[str, Path] = field(default_factory=dict)
    insecure: tuple[str, ...] = ()
    push: bool = False
    cache_mounts: list[str] = field(default_factory=list)  # RUN --mount=type=cache options given to every RUN


@dataclass
class _StageState:
    """Where a stage is: its layers, its image config, its variables, and the cache key of its last step."""

    name: str
    layers: list[Layer]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    key: str
    args: dict[str, str] = field(default_factory=dict)
    workdir_pending: str | None = None
    base_label: str = ""

    @property
    def runtime(self) -> dict[str, Any]:
        cfg: dict[str, Any] = self.config.setdefault("config", {})
        return cfg

    @property
    def env(self) -> dict[str, str]:
        out = {}
        for item in self.runtime.get("Env") or []:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out

    def variables(self) -> dict[str, str]:
        """What ``$NAME`` expands to in this stage: its ARGs, then its ENV on top."""
        return {**self.args, **self.env}

    @property
    def chain(self) -> str | None:
        return self.layers[-1].chain if self.layers else None


def _shown_path(path: Path) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def load_build_file(opts: BuildOptions, context: Path) -> Dockerfile | WasmBuild:
    """What to build, in ZLayer's order: a runtime template (``--runtime``, or detected from the context with
    ``--runtime-auto``), a ZImagefile (``-z``), a Dockerfile (``-f``), then the context's own ``ZImagefile`` or
    ``Dockerfile``, and last a runtime template detected from the context when it has neither."""
    from zlayer.builder import templates
    from zlayer.builder.dockerfile import parse

    if opts.dockerfile_text is not None:
        return parse(opts.dockerfile_text, str(opts.dockerfile or "Dockerfile"))
    if opts.runtime:
        found = templates.template(opts.runtime)
        if found is None:
            raise UsageError(f"--runtime {shown(opts.runtime)}: no such runtime template",
                             hint="zlayer runtimes lists them: " + ", ".join(templates.TEMPLATES))  # fmt: skip
        return parse(found.dockerfile, f"runtime template {found.name}")
    if opts.runtime_auto:
        detected = templates.detect(context)
        if detected is None:
            raise UsageError(f"--runtime-auto: no project file in {context} calls for a runtime template",
                             hint="zlayer runtimes lists the templates and the files that select them")  # fmt: skip
        return parse(detected.dockerfile, f"runtime template {detected.name} (detected)")
    for path, kind in ((opts.zimagefile, "z"), (opts.dockerfile, "d"), (context / "ZImagefile", "z"),
                       (context / "Dockerfile", "d")):  # fmt: skip
        if path is None:
            continue
        try:
            text = path.read_text()
        except FileNotFoundError:
            if path in (opts.zimagefile, opts.dockerfile):
                raise NotFoundError(f"{path} not found") from None
            continue
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not a build file") from None
        if kind == "z":
            from zlayer.builder.zimage import parse_zimagefile  # (and yaml) only for a ZImagefile

            return parse_zimagefile(text, _shown_path(path), templates.dockerfiles())
        return parse(text, _shown_path(path))
    found = templates.detect(context)
    if found is None:
        raise NotFoundError(f"nothing to build in {context}: no Dockerfile, no ZImagefile, and no project file a "
                            "runtime template knows", hint="name a file with -f or -z, or a template with "
                            "--runtime (zlayer runtimes lists them)")  # fmt: skip
    return parse(found.dockerfile, f"runtime template {found.name} (detected)")


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _platform_arch(platform: str | None) -> tuple[str, str, str | None]:
    if not platform:
        return "linux", host_arch(), None
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--platform {platform!r}: expected os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


class Builder:
    """Builds images into ``store``; ``work`` (``DATA/builder``) holds the step cache and the cache mounts."""

    def __init__(self, store: ImageStore, work: Path, progress: Progress | None = None) -> None:
        self.store = store
        self.work = private_dir(Path(work))
        for sub in ("cache", "mounts", "containers"):
            private_dir(self.work / sub)
        self.progress: Progress = progress or QuietProgress()

    # -- the build ------------------------------------------------------------------------------------------------

    async def build(self, opts: BuildOptions) -> LocalImage | None:
        """Run the build; the image in the store (None only for a ZImagefile's ``wasm:`` build with ``oci: false``,
        which makes the program's file alone)."""
        started = time.monotonic()
        # an uploaded context (a temporary dir under the builder's own) is never built again: nothing to remember
        uploaded = opts.context.resolve().is_relative_to(self.work.resolve())
        ctx = BuildContext.open(opts.context, None if uploaded else private_dir(self.work / "hashes"))
        dockerfile = load_build_file(opts, ctx.root)
        if not isinstance(dockerfile, Dockerfile):
            from zlayer.builder.wasm import build_wasm

            made = await build_wasm(dockerfile, opts, self.store, self.progress)
            self.progress.done(time.monotonic() - started)
            return made
        run = _Run(self, opts, ctx, dockerfile)
        try:
            image = await run.execute()
        finally:
            run.cleanup()
            ctx.hashes.save()
        self.progress.done(time.monotonic() - started)
        return image

    def cache_get(self, key: str, parent: str | None) -> Layer | None:
        try:
            record = json.loads((self.work / "cache" / key).read_text())
            desc, diff_id = record["descriptor"], record["diff_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        chain = chain_of(parent, diff_id)
        try:
            blob = self.store.blob_path(desc["digest"])
            if not blob.is_file() or blob.stat().st_size != desc["size"]:
                return None  # gone (pruned), or cut short by a crash before it reached the disk
            if not self.store.layer_complete(chain):
                self.store.unpack_one_layer(desc["digest"], diff_id, chain)
        except (ImageError, OSError):
            return None
        return Layer(desc, diff_id, chain)

    def cache_put(self, key: str, layer: Layer) -> None:
        record = {"descriptor": layer.descriptor, "diff_id": layer.diff_id}
        write_atomic(self.work / "cache" / key, json.dumps(record), durable=False)


class _Run:
    """The state of one build in progress."""

    def __init__(self, builder: Builder, opts: BuildOptions, ctx: BuildContext, dockerfile: Dockerfile) -> None:
        self.b = builder
        self.store = builder.store
        self.opts = opts
        self.ctx = ctx
        self.df = dockerfile
        # absolute: the step's bundle names its root by this path, and the shim runs in the bundle
        self.tmp = Path(tempfile.mkdtemp(dir=self.store.root / "tmp", prefix="build-")).absolute()
        self.id = uuid.uuid4().hex[:12]
        self.snapshots: list[Snapshot] = []
        self.views: list[Path] = []
        self.view_layers: dict[Path, list[Path]] = {}  # a view's root → its layer dirs, lowest first
        self.done: dict[int, _StageState] = {}
        self.images: dict[str, LocalImage] = {}
        self.os, self.arch, self.variant = _platform_arch(opts.platform)
        self.meta: dict[str, str] = {}
        for ins in dockerfile.meta_args:
            for name, default in arg_declarations(ins, self.meta):
                value = opts.build_args.get(name, default)
                if value is not None:
                    self.meta[name] = value
        self.step_no = 0
        self.total = 0
        self.wrote = 0  # layers this build made (not taken from the cache)

    def cleanup(self) -> None:
        for snap in self.snapshots:
            with contextlib.suppress(Exception):
                snap.unmount()
        for view in self.views:
            with contextlib.suppress(Exception):
                unmount_rootfs(view)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- which stages, in which order ------------------------------------------------------------------------------

    def _target(self) -> Stage:
        if self.opts.target is None:
            return self.df.stages[-1]
        stage = self.df.stage(self.opts.target)
        if stage is None or (stage.name is None and not self.opts.target.isdigit()):
            names = ", ".join(s.name or str(s.index) for s in self.df.stages)
            raise UsageError(f"--target {shown(self.opts.target)}: no such stage in {self.df.file} (it has: {names})")
        return stage

    def _deps(self, stage: Stage) -> list[Stage]:
        out = []
        base = self.df.stage(expand(stage.base, self.meta))
        if base is not None and base.index < stage.index:
            out.append(base)
        for ins in stage.instructions:
            refs = []
            if ins.keyword in ("COPY", "ADD") and ins.flag("from"):
                refs.append(str(ins.flag("from")))
            if ins.keyword == "RUN":
                for m in ins.flag_values("mount"):
                    opts = _mount_options(m, ins)
                    if "from" in opts:
                        refs.append(opts["from"])
            for ref in refs:
                dep = self.df.stage(ref)
                if dep is not None and dep.index < stage.index:
                    out.append(dep)
        return out

    def _order(self, target: Stage) -> list[Stage]:
        order: list[Stage] = []

        def visit(s: Stage) -> None:
            if s in order:
                return
            for dep in self._deps(s):
                visit(dep)
            order.append(s)

        visit(target)
        return order

    async def execute(self) -> LocalImage:
        target = self._target()
        stages = self._order(target)
        self.total = sum(1 + len(s.instructions) for s in stages)
        for stage in stages:
            self.done[stage.index] = await self._stage(stage)
        if self.wrote:
            await _thread(_syncfs, self.store.root)
        return await _thread(commit_image, self.store, self.done[target.index], self.opts.tags, self.b.work / "cache")

    # -- stages -------------------------------------------------------------------------------------------------

    async def _base(self, stage: Stage) -> _StageState:
        ins = stage.source
        ref = expand(stage.base, self.meta, where=ins)
        label = stage.name or f"stage-{stage.index}"
        if not ref:
            raise ins.error(f"{stage.base!r} expands to an empty image name", hint="pass it with --build-arg")
        parent_stage = self.df.stage(ref)
        if parent_stage is not None and parent_stage.index < stage.index:
            prev = self.done[parent_stage.index]
            return _StageState(label, list(prev.layers), copy.deepcopy(prev.config), list(prev.history), prev.key,
                               base_label=ref)  # fmt: skip
        if ref == "scratch":
            config: dict[str, Any] = {"architecture": self.arch, "os": self.os, "config": {"Env": [DEFAULT_ENV]}}
            if self.variant:
                config["variant"] = self.variant
            return _StageState(label, [], config, [], _sha("scratch", self.arch), base_label=ref)
        image = await self._image(ref, ins, stage.platform)
        layers = [
            Layer(desc, diff, chain)
            for desc, diff, chain in zip(
                image.manifest.get("layers", []),
                image_diff_ids(image.manifest, image.image_config),
                chain_ids(image_diff_ids(image.manifest, image.image_config)),
                strict=True,
            )
        ]
        config = {
            k: copy.deepcopy(v)
            for k, v in image.image_config.items()
            if k in ("architecture", "os", "variant", "config", "author")
        }
        config.setdefault("config", {})
        history = list(image.image_config.get("history") or [])
        missing = len(layers) - sum(1 for h in history if not h.get("empty_layer"))
        if missing > 0:  # an image without history (or with less): one entry per layer, as the spec wants
            history = [{"created_by": f"layer of {ref}", "comment": "history not recorded"}] * missing + history
        state = _StageState(label, layers, config, history, _sha("image", image.id), base_label=ref)
        for trigger in config["config"].pop("OnBuild", None) or []:
            nested = parse_instruction(str(trigger), f"{ref} (ONBUILD)", 1)
            await self._instruction(state, nested)
        return state

    async def _image(self, ref: str, ins: Instruction, platform: str | None) -> LocalImage:
        if ref in self.images:
            return self.images[ref]
        with contextlib.suppress(NotFoundError, UsageError, ImageError):
            # what the store has is used as it is (a pull's if_not_present) without loading the registry client
            self.images[ref] = await _thread(self.store.get, ref)
            return self.images[ref]
        from zlayer.images import pull
        from zlayer.images.reference import names_registry

        source = ref
        if not names_registry(ref):
            default = os.environ.get("ZLAYER_DEFAULT_REGISTRY", "").rstrip("/")
            if not default:
                raise BuildError(f"{ins.where}: {ins.keyword} {ref}: the image is not in the local store, and its "
                                 "name has no registry to pull it from",
                                 hint=f"name its registry (registry.example.com/{ref}), import it, or set "
                                 "ZLAYER_DEFAULT_REGISTRY")  # fmt: skip
            source = f"{default}/{ref}"
        try:
            image = await pull(self.store, source, policy="if_not_present", platform=platform or self.opts.platform,
                               insecure=self.opts.insecure)  # fmt: skip
            if source != ref:
                await _thread(self.store.tag, source, ref)
        except ZLayerError as e:
            raise BuildError(f"{ins.where}: {ins.keyword} {ref}: the image cannot be pulled: {e}",
                             hint=e.hint or "check the name, the registry and --platform") from e  # fmt: skip
        self.images[ref] = image
        return image

    async def _stage(self, stage: Stage) -> _StageState:
        label = stage.name or f"stage-{stage.index}"
        self.step_no += 1
        self.b.progress.step(label, self.step_no, self.total, stage.source.original.splitlines()[0])
        state = await self._base(stage)
        for ins in stage.instructions:
            self.step_no += 1
            self.b.progress.step(label, self.step_no, self.total, _summary(ins))
            await self._instruction(state, ins)
        return state

    # -- instructions -------------------------------------------------------------------------------------------

    async def _instruction(self, st: _StageState, ins: Instruction) -> None:
        kw = ins.keyword
        if kw in ("RUN", "COPY", "ADD"):
            await self._layer_step(st, ins)
            return
        variables = st.variables()
        cfg = st.runtime
        if kw == "ENV":
            env = [e for e in cfg.get("Env") or []]
            for k, v in key_values(ins, variables):
                env = [e for e in env if e.partition("=")[0] != k] + [f"{k}={v}"]
            cfg["Env"] = env
        elif kw == "ARG":
            for name, default in arg_declarations(ins, variables):
                value = self.opts.build_args.get(name)
                if value is None:
                    value = default if default is not None else self.meta.get(name)
                if value is not None:
                    st.args[name] = value
        elif kw == "LABEL":
            labels = cfg.setdefault("Labels", {}) or {}
            cfg["Labels"] = labels
            for k, v in key_values(ins, variables):
                labels[k] = v
        elif kw == "WORKDIR":
            path = expand(ins.args, variables, where=ins)
            path = _clean_abs(path, cfg.get("WorkingDir") or "/")
            cfg["WorkingDir"] = path
            st.workdir_pending = path
        elif kw == "USER":
            cfg["User"] = expand(ins.args, variables, where=ins)
        elif kw == "EXPOSE":
            ports = cfg.setdefault("ExposedPorts", {}) or {}
            cfg["ExposedPorts"] = ports
            for word in split_words(expand(ins.args, variables, where=ins)):
                port, _, proto = word.partition("/")
                if not port.replace("-", "").isdigit() or proto not in ("", "tcp", "udp", "sctp"):
                    raise ins.error(f"{word!r} is not a port (PORT[/tcp|udp|sctp])")
                ports[f"{port}/{proto or 'tcp'}"] = {}
        elif kw in ("CMD", "ENTRYPOINT"):
            argv = list(ins.exec_form) if ins.exec_form is not None else [*self._shell(st), ins.args]
            cfg["Cmd" if kw == "CMD" else "Entrypoint"] = argv
            if kw == "ENTRYPOINT":
                cfg["Cmd"] = None  # Docker: a new ENTRYPOINT drops the CMD the base image had
        elif kw == "SHELL":
            if ins.exec_form is None or not ins.exec_form:
                raise ins.error('needs the JSON form, e.g. SHELL ["/bin/bash", "-c"]')
            cfg["Shell"] = list(ins.exec_form)
        elif kw == "VOLUME":
            vols = cfg.setdefault("Volumes", {}) or {}
            cfg["Volumes"] = vols
            words = list(ins.exec_form) if ins.exec_form is not None else split_words(expand(ins.args, variables))
            for v in words:
                vols[v] = {}
        elif kw == "STOPSIGNAL":
            cfg["StopSignal"] = expand(ins.args, variables, where=ins)
        elif kw == "HEALTHCHECK":
            cfg["Healthcheck"] = _healthcheck(ins)
        elif kw == "ONBUILD":
            cfg.setdefault("OnBuild", [])
            cfg["OnBuild"] = [*(cfg["OnBuild"] or []), ins.args]
        elif kw == "MAINTAINER":
            st.config["author"] = ins.args
        st.key = _sha(st.key, ins.keyword, ins.original, json.dumps(sorted(st.args.items())))
        st.history.append({"created": _now(), "created_by": _created_by(ins), "comment": "zlayer build",
                           "empty_layer": True})  # fmt: skip

    def _shell(self, st: _StageState) -> list[str]:
        return list(st.runtime.get("Shell") or DEFAULT_SHELL)

    async def _layer_step(self, st: _StageState, ins: Instruction) -> None:
        variables = st.variables()
        inputs, action = await self._prepare(st, ins, variables)
        key = _sha(st.key, ins.keyword, ins.original, json.dumps(sorted(variables.items())),
                   st.workdir_pending or "", inputs)  # fmt: skip
        layer = None if self.opts.no_cache else self.b.cache_get(key, st.chain)
        if layer is not None:
            self.b.progress.cached()
        else:
            snap = Snapshot(self.tmp, [self.store.layer_dir(layer.chain) for layer in st.layers])
            self.snapshots.append(snap)
            try:
                if st.workdir_pending:
                    _mkdir_p(snap.merged, st.workdir_pending)
                made = await action(snap)
                layer = await _thread(snap.commit, self.store, st.chain)
                self.wrote += 1
                if isinstance(made, _Reuse):
                    made.save(self.store.layer_dir(layer.chain), layer.chain)
            finally:
                snap.discard()
                self.snapshots.remove(snap)
            self.b.cache_put(key, layer)
        st.workdir_pending = None
        st.layers.append(layer)
        st.key = key
        st.history.append({"created": _now(), "created_by": _created_by(ins), "comment": "zlayer build"})

    async def _prepare(
        self, st: _StageState, ins: Instruction, variables: dict[str, str]
    ) -> tuple[str, Callable[[Snapshot], Any]]:
        """What the step's cache key takes beyond the instruction, and the action that makes its changes."""
        if ins.keyword == "RUN":
            return await self._prepare_run(st, ins, variables)
        return await self._prepare_copy(st, ins, variables)

    # -- RUN ----------------------------------------------------------------------------------------------------

    async def _prepare_run(
        self, st: _StageState, ins: Instruction, variables: dict[str, str]
    ) -> tuple[str, Callable[[Snapshot], Any]]:
        if ins.exec_form is not None:
            argv = list(ins.exec_form)
        else:
            script = ins.args
            if ins.heredocs:
                rest = script
                for doc in ins.heredocs:
                    rest = rest.replace(f"<<-{doc.name}", "").replace(f"<<{doc.name}", "")
                    for q in ("'", '"'):
                        rest = rest.replace(f"<<-{q}{doc.name}{q}", "").replace(f"<<{q}{doc.name}{q}", "")
                if not rest.strip() and len(ins.heredocs) == 1:
                    script = ins.heredocs[0].body
                else:
                    script = script + "\n" + "".join(f"{d.body}{d.name}\n" for d in ins.heredocs)
            argv = [*self._shell(st), script]
        mounts, inputs = await self._run_mounts(st, ins, variables)
        env = [f"{k}={v}" for k, v in st.args.items() if k not in st.env] + list(st.runtime.get("Env") or [])
        cwd = st.runtime.get("WorkingDir") or "/"
        user = str(st.runtime.get("User") or "")

        async def action(snap: Snapshot) -> None:
            if self.arch != host_arch():
                raise ins.error(f"cannot RUN for {self.os}/{self.arch} on this {host_arch()} host",
                                hint="build for this host's platform")  # fmt: skip
            _mkdir_p(snap.merged, cwd)
            made = _missing_mount_points(snap.merged, [m["destination"] for m in mounts] + _STANDARD_MOUNTS)
            cid = f"zlbuild-{self.id}-{self.step_no}"
            try:
                config = step_config(snap.merged, argv, env, cwd, user, mounts, hostname=cid[:63])
            except RuntimeFailure as e:
                raise ins.error(str(e)) from None
            result = await run_step(cid, snap.dir / "bundle", self.b.work / "containers", config,
                                    self.b.progress.output)  # fmt: skip
            _remove_mount_points(snap.merged, made)
            if result.code != 0:
                tail = "\n".join(f"  {line}" for line in result.tail[-10:])
                raise BuildError(
                    f"{ins.where}: RUN {_summary(ins, 60)[4:]}: exited with code {result.code}"
                    + (f"; its last output:\n{tail}" if tail else " (no output)")
                )

        return inputs, action

    async def _run_mounts(
        self, st: _StageState, ins: Instruction, variables: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str]:
        mounts: list[dict[str, Any]] = []
        inputs: list[str] = []
        for raw in [*ins.flag_values("mount"), *self.opts.cache_mounts]:
            o = _mount_options(expand(raw, variables, where=ins), ins)
            kind = o.get("type", "bind")
            target = o.get("target") or o.get("dst") or o.get("destination")
            if kind == "secret":
                sid = o.get("id") or (os.path.basename(target) if target else "")
                src = self.opts.secrets.get(sid)
                if src is None:
                    if o.get("required") in ("true", "1", None) and "required" in o:
                        raise ins.error(f"secret {sid!r} is required but was not given (--secret id={sid},src=FILE)")
                    continue
                target = target or f"/run/secrets/{sid}"
                mounts.append({"destination": target, "type": "bind", "source": str(Path(src).resolve()),
                               "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})  # fmt: skip
                continue
            if not target:
                raise ins.error(f"--mount={raw}: needs target=PATH")
            target = _clean_abs(target, st.runtime.get("WorkingDir") or "/")
            if kind == "cache":
                cid = o.get("id") or target
                path = private_dir(self.b.work / "mounts" / _sha(cid)[:32])
                if "mode" in o or "uid" in o or "gid" in o:
                    os.chmod(path, int(o.get("mode", "755"), 8))
                    os.chown(path, int(o.get("uid", "0")), int(o.get("gid", "0")))
                else:
                    os.chmod(path, 0o755)
                mounts.append({"destination": target, "type": "bind", "source": str(path), "options": ["rbind", "rw"]})
            elif kind == "bind":
                src_rel = o.get("source") or o.get("src") or "/"
                if "from" in o:
                    root = await self._view(o["from"], ins)
                    inputs.append(f"from:{o['from']}:{self._key_of(o['from'])}")
                    src = resolve_in_root(root, src_rel)
                else:
                    rels = self.ctx.sources(src_rel, f"{ins.where}: {ins.keyword}")
                    inputs.append(tree_digest(self.ctx.root, rels, self.ctx.ignore, hashes=self.ctx.hashes))
                    src = self.ctx.root / rels[0] if rels[0] else self.ctx.root
                ro = "rw" not in o and o.get("readwrite") is None
                if not ro:
                    # writes to a bind mount are discarded (BuildKit's rule): give the step a copy
                    copy_dir = Path(tempfile.mkdtemp(dir=self.tmp, prefix="bind-"))
                    shutil.copytree(src, copy_dir / "src", symlinks=True)
                    src = copy_dir / "src"
                mounts.append({"destination": target, "type": "bind", "source": str(src),
                               "options": ["rbind", "ro" if ro else "rw"]})  # fmt: skip
            elif kind == "tmpfs":
                mounts.append({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]})
            else:
                raise ins.error(f"--mount type={kind}: not supported (cache, bind, secret, tmpfs)")
        return mounts, "\0".join(inputs)

    # -- COPY and ADD -------------------------------------------------------------------------------------------

    def _key_of(self, ref: str) -> str:
        stage = self.df.stage(ref)
        if stage is not None and stage.index in self.done:
            return self.done[stage.index].key
        return ref

    async def _view(self, ref: str, ins: Instruction) -> Path:
        """A read-only root filesystem of a finished stage (by name or index) or of an image, mounted once."""
        stage = self.df.stage(ref)
        if stage is not None:
            if stage.index not in self.done:
                raise ins.error(f"stage {ref!r} is not built before this step (a stage may only use earlier ones)")
            dirs = [self.store.layer_dir(layer.chain) for layer in self.done[stage.index].layers]
        else:
            image = await self._image(ref, ins, None)
            dirs = image.layer_dirs
        root = self.tmp / f"view-{_sha(ref)[:16]}" / "root"
        if root not in self.views:
            mount_rootfs(dirs, root.parent / "upper", root.parent / "work", root, readonly=True)
            self.views.append(root)
            self.view_layers[root] = list(dirs)
        return root

    def _files_of(self, ref: str, rels: list[str]) -> str:
        """What identifies the files at ``rels`` of a finished stage: the DiffIDs, in order, of its layers that hold
        anything at those paths — a layer that changed only other paths leaves the key as it was (BuildKit's cache
        by content), and nothing is read to key a COPY --from. Of an image: its ID."""
        stage = self.df.stage(ref)
        if stage is None or stage.index not in self.done:
            image = self.images.get(ref)
            return image.id if image is not None else ref
        layers = self.done[stage.index].layers
        held = [
            [layer.diff_id for layer in layers if os.path.lexists(os.path.join(self.store.layer_dir(layer.chain), rel))]
            for rel in rels
        ]
        return json.dumps(held)

    async def _prepare_copy(
        self, st: _StageState, ins: Instruction, variables: dict[str, str]
    ) -> tuple[str, Callable[[Snapshot], Any]]:
        words = list(ins.exec_form) if ins.exec_form is not None else split_words(ins.args)
        words = [expand(w, variables, where=ins) if not w.startswith("<<") else w for w in words]
        if len(words) < 2:
            raise ins.error("needs a source and a destination")
        *srcs, dest = words
        workdir = st.runtime.get("WorkingDir") or "/"
        dest_dir = dest.endswith("/") or dest in (".", "..")
        dest = _clean_abs(dest, workdir) + ("/" if dest_dir else "")
        chown = ins.flag("chown")
        chmod = ins.flag("chmod")
        mode = None
        if chmod is not None:
            try:
                mode = int(chmod, 8)
            except ValueError:
                raise ins.error(f"--chmod={chmod!r} is not an octal mode") from None
        from_ref = ins.flag("from")
        items: list[tuple[str, Path | str]] = []  # (name in dest, source path or heredoc text)
        inputs: list[str] = []
        docs = {d.name: d for d in ins.heredocs}
        source_root: Path | None = None
        for src in srcs:
            if src.startswith("<<"):
                name = src.lstrip("<-").strip("'\"")
                doc = docs.get(name)
                if doc is None:
                    raise ins.error(f"heredoc {src} has no body")
                body = expand(doc.body, variables) if doc.expand else doc.body
                items.append((name, body))
                inputs.append(_sha(name, body))
            elif from_ref is not None:
                source_root = await self._view(expand(from_ref, variables), ins)
                path = resolve_in_root(source_root, src if src.startswith("/") else "/" + src)
                if any(c in src for c in "*?["):
                    matched = sorted(Path(p) for p in _glob_in(source_root, src))
                    if not matched:
                        raise ins.error(f"no file in {from_ref} matches {src!r}")
                else:
                    if not os.path.lexists(path):
                        raise ins.error(f"source {src!r} not found in {from_ref}")
                    matched = [path]
                items += [(m.name, m) for m in matched]
                # by the DiffIDs of the source's layers that hold these paths: nothing is read to key the step
                rels = [str(m.relative_to(source_root)) for m in matched]
                inputs.append(f"from:{src}:{json.dumps(rels)}:{self._files_of(expand(from_ref, variables), rels)}")
            elif ins.keyword == "ADD" and src.startswith(("http://", "https://")):
                fetched = await _thread(_download, src, self.tmp, ins)
                items.append((os.path.basename(src.split("?")[0]) or "download", fetched))
                inputs.append(tree_digest(fetched.parent, [fetched.name], None))
            else:
                rels = self.ctx.sources(src, f"{ins.where}: {ins.keyword}")
                items += [(Path(r).name if r else "", self.ctx.root / r if r else self.ctx.root) for r in rels]
                digest = functools.partial(tree_digest, hashes=self.ctx.hashes)
                inputs.append(await _thread(digest, self.ctx.root, rels, self.ctx.ignore))
        many = len(items) > 1
        ignore_root = self.ctx.root if from_ref is None else None

        # a COPY from the context made before by this same step (same parent, same instruction) left a layer whose
        # unchanged files can be linked rather than written again
        reuse_record = self.b.work / "cache" / f"reuse-{_sha(st.key, ins.keyword, ins.original)}"

        async def action(snap: Snapshot) -> _Reuse | None:
            owner = _owner(snap.merged, chown, ins)
            links: _Links | _Reuse | None = None
            if source_root is not None:
                links = _Links(source_root, self.view_layers.get(source_root, []), owner, mode)
            elif ins.keyword == "COPY":
                links = _Reuse(reuse_record, self.store, snap.upper, self.ctx.hashes, owner, mode)
            await _thread(self._copy_all, snap, items, dest, many, owner, mode, ins, ignore_root, links)
            return links if isinstance(links, _Reuse) else None

        return "\0".join(inputs), action

    def _copy_all(
        self,
        snap: Snapshot,
        items: list[tuple[str, Path | str]],
        dest: str,
        many: bool,
        owner: tuple[int, int],
        mode: int | None,
        ins: Instruction,
        ignore_root: Path | None,
        links: _Links | _Reuse | None = None,
    ) -> None:
        """Copy ``items`` to ``dest``. Paths are resolved in the step's overlay (its symlinks, what is a directory);
        then, when nothing is to be unpacked, the overlay goes and the files are written straight into the upper
        directory (overlayfs's copy-up done by hand for the parents): no overlay lookup per file."""
        merged = snap.merged
        target = resolve_in_root(merged, dest)
        rel = target.relative_to(merged)
        dest_is_dir = dest.endswith("/") or many or target.is_dir()
        direct = not any(
            ins.keyword == "ADD" and not isinstance(src, str) and src.is_file() and _is_archive(src) for _, src in items
        )
        root = merged
        if direct:
            parents = _parent_metadata(merged, rel if dest_is_dir else rel.parent)
            snap.unmount()
            root = snap.upper
            _make_parents(root, parents)
        out_dir = root / rel if dest_is_dir else (root / rel).parent
        for name, src in items:
            out = out_dir / name if dest_is_dir else root / rel
            if not direct:
                _mkdir_p(root, "/" + str(out_dir.relative_to(root)))
            if isinstance(src, str):  # heredoc
                out.write_text(src)
                os.chown(out, *owner)
                os.chmod(out, mode if mode is not None else 0o644)
            elif ins.keyword == "ADD" and src.is_file() and _is_archive(src):
                _extract(src, root / rel, ins)
            elif src.is_dir() and not src.is_symlink():
                (root / rel).mkdir(parents=True, exist_ok=True)
                if isinstance(links, _Links):
                    src = links.single_layer(src) or src
                _copy_tree(src, root / rel, owner, mode, self.ctx if ignore_root else None, links)
            else:
                _copy_entry(src, out, owner, mode, links)


# -- helpers --------------------------------------------------------------------------------------------------------

_STANDARD_MOUNTS = ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread; a cancellation waits for it to finish (a thread cannot be stopped, and the
    clean-up that follows must not remove what it is still writing) before it goes on."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await fut
        raise


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` once: the layers a build wrote (without an fsync each) reach the disk
    before the image that names them is recorded."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _summary(ins: Instruction, limit: int = 100) -> str:
    text = " ".join(ins.original.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _created_by(ins: Instruction) -> str:
    text = ins.original.strip()
    return f"{text} # buildkit" if ins.keyword in ("RUN", "COPY", "ADD") else text


def _clean_abs(path: str, cwd: str) -> str:
    full = path if path.startswith("/") else f"{cwd.rstrip('/')}/{path}"
    return "/" + "/".join(p for p in os.path.normpath(full).split("/") if p)


def _mount_options(text: str, ins: Instruction) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item:
            continue
        k, eq, v = item.partition("=")
        out[k.strip().lower()] = v.strip() if eq else "true"
    if out.get("type", "bind") not in ("bind", "cache", "secret", "tmpfs", "ssh"):
        raise ins.error(f"--mount={text}: unknown type {out.get('type')!r}")
    return out


def _mkdir_p(root: Path, path: str) -> None:
    """Create ``path`` (absolute in the container) below ``root``, its symlinks resolved inside the root."""
    target = resolve_in_root(root, path)
    if not target.is_dir():
        target.mkdir(parents=True, exist_ok=True, mode=0o755)


def _missing_mount_points(root: Path, dests: list[str]) -> list[Path]:
    """The mount points a step will need created, deepest last, with every parent that does not exist yet."""
    made: list[Path] = []
    for dest in dests:
        parts = [p for p in dest.split("/") if p]
        for i in range(1, len(parts) + 1):
            p = root.joinpath(*parts[:i])
            if not os.path.lexists(p) and p not in made:
                made.append(p)
    return made


def _remove_mount_points(root: Path, made: list[Path]) -> None:
    """Remove the mount points the runtime made (left empty) so that they are not part of the layer."""
    for p in sorted(made, key=lambda x: len(x.parts), reverse=True):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif p.is_file() and p.stat().st_size == 0:
                p.unlink()


def _owner(root: Path, chown: str | None, ins: Instruction) -> tuple[int, int]:
    if not chown:
        return 0, 0
    from zlayer.runtime.linux.users import resolve_user

    user, _, group = chown.partition(":")
    try:
        who = resolve_user(root, f"{user}:{group or user}" if group or not user.isdigit() else user)
    except RuntimeFailure as e:
        raise ins.error(f"--chown={chown}: {e}") from None
    if not group and user.isdigit():
        return who.uid, who.uid
    return who.uid, who.gid


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Links:
    """Hard links instead of copies for a COPY --from: a regular file the copy would leave exactly as it is (same
    owner, same mode) is linked from the store's layer that holds it. Layers are never written in place (a step
    changes a lower file by overlayfs's copy-up, a COPY over one unlinks it first), so a link is as good as a copy
    and costs no read or write of its data."""

    def __init__(self, view: Path, layers: list[Path], owner: tuple[int, int], mode: int | None) -> None:
        self.view = str(view)
        self.layers = [str(d) for d in reversed(layers)]  # top-most first: the first that has a path is what shows
        self.owner, self.mode = owner, mode

    def single_layer(self, src: Path) -> Path | None:
        """The directory behind ``src`` (a directory in the view) when one layer alone holds that path: its tree is
        then what the view shows (a whiteout or opaque mark inside hides nothing below), and can be walked there,
        without overlayfs's lookups."""
        path = str(src)
        if not path.startswith(self.view + "/"):
            return None
        rel = path[len(self.view) + 1 :]
        holders = [layer for layer in self.layers if os.path.lexists(os.path.join(layer, rel))]
        if len(holders) != 1:
            return None
        real = Path(holders[0], rel)
        return real if real.is_dir() and not real.is_symlink() else None

    def source(self, src: str, st: os.stat_result, out: Path) -> str | None:
        """The layer file behind ``src`` (a path in the view, or in a layer), when a link to it is what the copy
        would make."""
        if (st.st_uid, st.st_gid) != self.owner or (self.mode is not None and self.mode != stat.S_IMODE(st.st_mode)):
            return None
        if any(src.startswith(layer + "/") for layer in self.layers):
            return src if stat.S_ISREG(st.st_mode) else None
        if not src.startswith(self.view + "/"):
            return None
        rel = src[len(self.view) + 1 :]
        for layer in self.layers:
            path = os.path.join(layer, rel)
            try:
                real = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError:
                return None
            same = stat.S_ISREG(real.st_mode) and (real.st_size, real.st_mtime_ns, real.st_mode) == (
                st.st_size, st.st_mtime_ns, st.st_mode)  # fmt: skip
            return path if same else None
        return None


class _Reuse:
    """Hard links, for a COPY from the build context, to the files the same step's previous layer holds where they
    are what this copy would write: the same content (by the context's remembered digests, recorded per file with
    that layer), owner, mode, size and mtime. A rebuild after one file changed then writes one file, not all."""

    def __init__(self, record: Path, store: ImageStore, upper: Path, hashes: FileHashes, owner: tuple[int, int],
                 mode: int | None) -> None:  # fmt: skip
        self.record, self.upper = record, str(upper)
        self.hashes, self.owner, self.mode = hashes, owner, mode
        self.files: dict[str, str] = {}  # this layer's path → the digest of what it holds
        self.prev_dir: str | None = None
        self.prev: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(record.read_bytes())
            if store.layer_complete(data["chain"]):
                self.prev_dir, self.prev = str(store.layer_dir(data["chain"])), dict(data["files"])

    def source(self, src: str, st: os.stat_result, out: Path) -> str | None:
        digest = self.hashes.remembered(src)
        path = str(out)
        if digest is None or not path.startswith(self.upper + "/"):
            return None
        rel = path[len(self.upper) + 1 :]
        self.files[rel] = digest
        if self.prev_dir is None or self.prev.get(rel) != digest:
            return None
        old = f"{self.prev_dir}/{rel}"
        try:
            o = os.lstat(old)
        except OSError:
            return None
        mode = self.mode if self.mode is not None else stat.S_IMODE(st.st_mode)
        same = stat.S_ISREG(o.st_mode) and (stat.S_IMODE(o.st_mode), o.st_uid, o.st_gid, o.st_size, o.st_mtime_ns) == (
            mode, *self.owner, st.st_size, st.st_mtime_ns)  # fmt: skip
        return old if same else None

    def save(self, layer_dir: Path, chain: str) -> None:
        """Record what the layer just made holds, for the next build of this step."""
        if self.files and layer_dir.is_dir():
            write_atomic(self.record, json.dumps({"chain": chain, "files": self.files}, separators=(",", ":")),
                         durable=False)  # fmt: skip


def _link(real: str, out: Path) -> bool:
    try:
        os.link(real, out)
    except FileExistsError:
        _replace(out)
        os.link(real, out)
    except OSError:  # another filesystem, the link limit: copy it
        return False
    return True


def _copy_entry(
    src: Path, out: Path, owner: tuple[int, int], mode: int | None, links: _Links | _Reuse | None = None
) -> None:
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        try:
            os.symlink(os.readlink(src), out)
        except FileExistsError:
            _replace(out)
            os.symlink(os.readlink(src), out)
        os.lchown(out, *owner)
        return
    if stat.S_ISDIR(st.st_mode):
        out.mkdir(exist_ok=True)
        os.chown(out, *owner)
        os.chmod(out, mode if mode is not None else stat.S_IMODE(st.st_mode))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        return
    if not stat.S_ISREG(st.st_mode):
        return  # sockets, devices, fifos in a context are not copied
    if links is not None:
        real = links.source(str(src), st, out)
        if real is not None and _link(real, out):
            return
    try:
        fd = os.open(out, _CREATE, 0o600)
    except FileExistsError:
        _replace(out)
        fd = os.open(out, _CREATE, 0o600)
    try:
        with open(src, "rb") as fi:
            n = st.st_size
            while n > 0:
                copied = os.sendfile(fd, fi.fileno(), None, n)
                if copied <= 0:
                    break
                n -= copied
        # by descriptor: no second path lookup (through the overlay, when it is one) per change
        os.fchown(fd, *owner)
        os.fchmod(fd, mode if mode is not None else stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)


def _replace(path: Path) -> None:
    """Make room for a new entry at ``path``: what is there goes, a directory with all it holds."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _parent_metadata(merged: Path, rel: Path) -> list[tuple[Path, os.stat_result | None]]:
    """Each directory on the way to ``rel`` in the step's overlay, with its lstat (None where it does not exist)."""
    out: list[tuple[Path, os.stat_result | None]] = []
    walked = Path()
    for part in rel.parts:
        walked = walked / part
        try:
            st = os.lstat(merged / walked)
        except FileNotFoundError:
            st = None
        out.append((walked, st if st is None or stat.S_ISDIR(st.st_mode) else None))
    return out


def _make_parents(upper: Path, parents: list[tuple[Path, os.stat_result | None]]) -> None:
    """Create the directories in the upper dir as overlayfs would copy them up: with the owner, mode and times of
    the directory below (a new one: root's, 0755)."""
    for rel, st in parents:
        path = upper / rel
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            continue
        if st is None:
            os.chmod(path, 0o755)
            continue
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_tree(
    src: Path,
    dst: Path,
    owner: tuple[int, int],
    mode: int | None,
    ctx: BuildContext | None,
    links: _Links | _Reuse | None = None,
) -> None:
    """Copy the contents of ``src`` into ``dst`` (Docker: a directory source copies what it holds)."""
    dirs: list[tuple[Path, Path]] = []
    top = len(str(ctx.root).rstrip("/")) + 1 if ctx is not None else 0

    def ignored(path: Path) -> bool:
        return ctx is not None and ctx.ignore.excluded(str(path)[top:])  # relative to the context's root

    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out_dir = dst if rel_dir == "." else dst / rel_dir
        keep = []
        for d in sorted(dirnames):
            s = Path(dirpath) / d
            if ignored(s):
                continue
            if s.is_symlink():
                _copy_entry(s, out_dir / d, owner, mode)
                continue
            keep.append(d)
            (out_dir / d).mkdir(exist_ok=True)
            dirs.append((s, out_dir / d))
        dirnames[:] = keep
        for f in filenames:
            s = Path(dirpath) / f
            if ignored(s):
                continue
            _copy_entry(s, out_dir / f, owner, mode, links)
    for s_dir, d_out in reversed(dirs):
        st = os.lstat(s_dir)
        os.chown(d_out, *owner)
        os.chmod(d_out, mode if mode is not None else stat.S_IMODE(st.st_mode))
        os.utime(d_out, ns=(st.st_atime_ns, st.st_mtime_ns))


def _glob_in(root: Path, pattern: str) -> list[str]:
    parent, _, base = pattern.rstrip("/").rpartition("/")
    where = resolve_in_root(root, "/" + parent)
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return []
    return [str(where / n) for n in names if fnmatch.fnmatchcase(n, base)]


_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")


def _is_archive(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_ARCHIVE_MAGIC):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def _extract(path: Path, dest: Path, ins: Instruction) -> None:
    try:
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="tar")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ins.error(f"cannot unpack the archive {path.name}: {e}") from None


def _download(url: str, tmp: Path, ins: Instruction) -> Path:
    import urllib.error
    import urllib.request

    out = Path(tempfile.mkdtemp(dir=tmp, prefix="add-")) / (os.path.basename(url.split("?")[0]) or "download")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as f:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ins.error(f"cannot download {url}: {e}") from None
    os.chmod(out, 0o600)
    return out


def _healthcheck(ins: Instruction) -> dict[str, Any]:
    from zlayer.spec.scalars import parse_duration_ns

    words = ins.args.split(None, 1)
    kind = words[0].upper()
    if kind == "NONE":
        return {"Test": ["NONE"]}
    if kind != "CMD" or len(words) < 2:
        raise ins.error("expected HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE")
    rest = words[1].strip()
    test: list[str]
    if rest.startswith("["):
        try:
            value = json.loads(rest)
            test = ["CMD", *[str(v) for v in value]]
        except ValueError:
            test = ["CMD-SHELL", rest]
    else:
        test = ["CMD-SHELL", rest]
    out: dict[str, Any] = {"Test": test}
    for flag, field_ in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                         ("start-interval", "StartInterval")):  # fmt: skip
        value = ins.flag(flag)
        if value is not None:
            try:
                out[field_] = parse_duration_ns(value)
            except (ValueError, ZLayerError) as e:
                raise ins.error(f"--{flag}={value}: {e}") from None
    retries = ins.flag("retries")
    if retries is not None:
        if not retries.isdigit():
            raise ins.error(f"--retries={retries}: not a number")
        out["Retries"] = int(retries)
    return out


def commit_image(store: ImageStore, st: _StageState, tags: list[str], cache: Path | None = None) -> LocalImage:
    """Write the image config and manifest of a finished stage into the store and name it. With ``cache``, a build
    whose every step came from the cache gets the config (and so the image ID) the first such build wrote."""
    record = cache / f"image-{st.key}" if cache is not None else None
    data = b""
    if record is not None:
        with contextlib.suppress(OSError, ImageError):
            digest = record.read_text().strip()
            if store.has_blob(digest):
                data = store.blob_path(digest).read_bytes()
    if not data:
        config = dict(st.config)
        config["config"] = {k: v for k, v in st.runtime.items() if v is not None}
        config["created"] = _now()
        config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in st.layers]}
        config["history"] = st.history
        data = json.dumps(config, separators=(",", ":")).encode()
    with store.lease() as lease:
        digest = store.put_blob(data, lease=lease)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": len(data)},
            "layers": [layer.descriptor for layer in st.layers],
        }
        # the store keeps named images only (anything else is garbage to prune): an untagged build is named after
        # its image ID, which `zlayer build` prints and every command takes
        name = tags[0] if tags else f"localhost/build-{digest[7:19]}:latest"
        image = store.add_image(name, manifest, lease=lease)
        for tag in tags[1:]:
            store.set_name(tag, image.digest)
    if record is not None:
        write_atomic(record, digest, durable=False)
    return image
