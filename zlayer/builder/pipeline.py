"""ZPipeline: several images built from one manifest (ZLayer's ``ZPipeline.yaml``), each as ``zlayer build`` would
build it, in the order their ``depends_on`` gives; an image starts as soon as every image it depends on is built,
so independent ones run side by side.

The format is ZLayer's: ``version``, ``vars`` (``${NAME}`` in tags, files, contexts and build arguments; ``--set``
overrides them), ``defaults`` (``build_args``, ``no_cache``, ``cache_mounts``, ``retries``, ``format``,
``platforms``), ``images`` (a map in order: ``file``, ``context`` relative to the manifest's directory, ``tags``,
``build_args``, ``depends_on``, ``no_cache``, ``cache_mounts``, ``retries``, ``format``, ``platforms``) and
``push.after_all``. Every mistake is a :class:`~zlayer.errors.SpecError` naming the line and the field.

A failed image fails the images that depend on it (they are skipped); with ``fail_fast`` (the default) the builds
still running are cancelled, cleanly, as a Ctrl-C cancels one build. ``retries`` runs a build whose step failed
again: every step it finished comes from the cache, so only the failing step runs again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from zlayer.builder.executor import Builder, BuildError, BuildOptions, Progress
from zlayer.builder.zimage import YamlReader, compose
from zlayer.errors import SpecError, UsageError, ZLayerError
from zlayer.images import ImageStore

PIPELINE_FILES = ("ZPipeline.yaml", "ZPipeline.yml", "zlayer-pipeline.yaml", "zlayer-pipeline.yml")
_TOP = {"version", "vars", "defaults", "images", "push"}
_DEFAULTS = {"format", "build_args", "no_cache", "cache_mounts", "retries", "platforms"}
_IMAGE = {"file", "context", "tags", "build_args", "depends_on", "no_cache", "format", "cache_mounts", "retries",
          "platforms"}  # fmt: skip
_PUSH = {"after_all"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class PipelineImage:
    """One image of the pipeline, its settings merged with the defaults and its variables substituted."""

    name: str
    file: Path
    context: Path
    tags: list[str]
    build_args: dict[str, str]
    depends_on: list[str]
    no_cache: bool = False
    cache_mounts: list[str] = field(default_factory=list)
    retries: int = 0
    platform: str | None = None

    def options(self, insecure: Sequence[str] = ()) -> BuildOptions:
        """What ``zlayer build`` would be given for this image: a file named ``ZImagefile*`` or ``*.yaml``/``*.yml``
        is a ZImagefile (ZLayer's rule), anything else a Dockerfile."""
        zimage = self.file.name.startswith("ZImagefile") or self.file.suffix in (".yaml", ".yml")
        return BuildOptions(context=self.context, dockerfile=None if zimage else self.file,
                            zimagefile=self.file if zimage else None, tags=list(self.tags),
                            build_args=dict(self.build_args), platform=self.platform, no_cache=self.no_cache,
                            cache_mounts=list(self.cache_mounts), insecure=tuple(insecure))  # fmt: skip


@dataclass
class Pipeline:
    file: str
    images: dict[str, PipelineImage]
    push_after_all: bool = False

    def select(self, only: Sequence[str]) -> list[str]:
        """The images ``--only`` names, in the manifest's order (all of them without it). What they depend on
        outside the selection is taken as built: its image is already in the local store."""
        unknown = [n for n in only if n not in self.images]
        if unknown:
            raise UsageError(f"--only {','.join(only)}: {', '.join(unknown)} is not an image of {self.file}",
                             hint="its images: " + ", ".join(self.images))  # fmt: skip
        return [n for n in self.images if not only or n in only]


def find_pipeline(directory: Path) -> Path:
    """ZLayer's discovery: the first of :data:`PIPELINE_FILES` in ``directory``."""
    for name in PIPELINE_FILES:
        if (directory / name).is_file():
            return directory / name
    raise UsageError(f"no pipeline file in {directory} ({', '.join(PIPELINE_FILES)})",
                     hint="create a ZPipeline.yaml, or name one with -f")  # fmt: skip


def load_pipeline(path: Path, overrides: Mapping[str, str] | None = None, platform: str | None = None) -> Pipeline:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path} not found", where="-f") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read as a pipeline: {e}", where="-f") from None
    return parse_pipeline(text, str(path), path.parent, overrides, platform)


def parse_pipeline(text: str, file: str, base: Path, overrides: Mapping[str, str] | None = None,
                   platform: str | None = None) -> Pipeline:  # fmt: skip
    """Read a ZPipeline; paths are relative to ``base`` (the manifest's directory), ``overrides`` are ``--set``'s
    variables and ``platform`` the ``--platform`` every image is built for."""
    r = YamlReader(file)
    root = compose(text, file)
    if root is None:
        raise SpecError(f"{file}: empty pipeline", hint="it needs images: (a map of names to images)")
    top = r.mapping(root, "", _TOP)
    variables = dict(r.pairs(top["vars"][1], "vars")) if "vars" in top else {}
    variables.update(overrides or {})
    defaults = r.mapping(top["defaults"][1], "defaults", _DEFAULTS) if "defaults" in top else {}
    if "images" not in top:
        raise r.fail(root, "images", "a pipeline needs images: (a map of names to images)")
    images_node = top["images"][1]
    if not isinstance(images_node, yaml.MappingNode) or not images_node.value:
        raise r.fail(images_node, "images", "expected a map of image names to images")
    images: dict[str, PipelineImage] = {}
    nodes: dict[str, dict[str, tuple[yaml.Node, yaml.Node]]] = {}
    for name_node, image_node in images_node.value:
        name = r.string(name_node, "images")
        if name in images:
            raise r.fail(name_node, f"images.{name}", "given twice")
        fields = r.mapping(image_node, f"images.{name}", _IMAGE)
        nodes[name] = fields
        images[name] = _image(r, name, image_node, fields, defaults, variables, base, platform)
    for name, fields in nodes.items():
        if "depends_on" in fields:
            for i, dep_node in enumerate(_items(fields["depends_on"][1])):
                dep = images[name].depends_on[i]
                if dep not in images:
                    raise r.fail(dep_node, f"images.{name}.depends_on[{i}]", f"no image named {dep!r} in this "
                                 f"pipeline (it has: {', '.join(images)})")  # fmt: skip
    cycle = _cycle(images)
    if cycle:
        at = nodes[cycle[0]]["depends_on"][0]
        raise r.fail(at, f"images.{cycle[0]}.depends_on", "a dependency cycle: " + " -> ".join(cycle))
    push = r.mapping(top["push"][1], "push", _PUSH) if "push" in top else {}
    after_all = r.boolean(push["after_all"][1], "push.after_all") if "after_all" in push else False
    return Pipeline(file, images, after_all)


def _items(node: yaml.Node) -> list[yaml.Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else [node]


def _image(r: YamlReader, name: str, node: yaml.Node, fields: dict[str, tuple[yaml.Node, yaml.Node]],
           defaults: dict[str, tuple[yaml.Node, yaml.Node]], variables: dict[str, str], base: Path,
           platform: str | None) -> PipelineImage:  # fmt: skip
    at = f"images.{name}"

    def sub(value_node: yaml.Node, path: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(1) not in variables:
                raise r.fail(value_node, path, f"${{{m.group(1)}}} is not a variable of this pipeline (vars:, "
                             "or --set NAME=VALUE)")  # fmt: skip
            return variables[m.group(1)]

        return _VAR.sub(one, r.string(value_node, path))

    def setting(key: str) -> tuple[yaml.Node, str] | None:
        """The image's own value of ``key``, else the default's: (its node, its field path)."""
        if key in fields:
            return fields[key][1], f"{at}.{key}"
        if key in defaults:
            return defaults[key][1], f"defaults.{key}"
        return None

    if "file" not in fields:
        raise r.fail(node, f"{at}.file", "an image needs file: (its Dockerfile or ZImagefile)")
    file = base / sub(fields["file"][1], f"{at}.file")
    context = base / sub(fields["context"][1], f"{at}.context") if "context" in fields else base
    if not file.is_file():
        raise r.fail(fields["file"][1], f"{at}.file", f"{file} is not a file")
    if not context.is_dir():
        raise r.fail(fields["context"][1], f"{at}.context", f"{context} is not a directory")
    tags = [sub(n, f"{at}.tags[{i}]") for i, n in enumerate(_items(fields["tags"][1]))] if "tags" in fields else []
    args: dict[str, str] = {}
    for source, path in ((defaults, "defaults.build_args"), (fields, f"{at}.build_args")):
        if "build_args" in source:
            v = source["build_args"][1]
            if not isinstance(v, yaml.MappingNode):
                raise r.fail(v, path, "expected a mapping of names to values")
            args.update({r.string(k, path): sub(val, f"{path}.{k.value}") for k, val in v.value})
    depends = [r.string(n, f"{at}.depends_on[{i}]") for i, n in enumerate(_items(fields["depends_on"][1]))] if (
        "depends_on" in fields) else []  # fmt: skip
    image = PipelineImage(name, file, context, tags, args, depends)
    no_cache = setting("no_cache")
    if no_cache is not None:
        image.no_cache = r.boolean(*no_cache)
    retries = setting("retries")
    if retries is not None:
        image.retries = r.integer(*retries)
    fmt = setting("format")
    if fmt is not None and r.string(*fmt) != "oci":
        raise r.fail(fmt[0], fmt[1], f"format {r.string(*fmt)!r}: zlayer writes OCI images only (format: oci)")
    for source, path in ((defaults, "defaults.cache_mounts"), (fields, f"{at}.cache_mounts")):
        if "cache_mounts" in source:
            v = source["cache_mounts"][1]
            if not isinstance(v, yaml.SequenceNode):
                raise r.fail(v, path, "expected a list of cache mounts")
            image.cache_mounts += [r.cache_mount(c, f"{path}[{i}]") for i, c in enumerate(v.value)]
    platforms = setting("platforms")
    if platform is not None:
        image.platform = platform
    elif platforms is not None:
        listed = [r.string(n, f"{platforms[1]}[{i}]") for i, n in enumerate(_items(platforms[0]))]
        if len(listed) > 1:
            raise r.fail(platforms[0], platforms[1], "one platform per image: zlayer builds no multi-platform "
                         "manifest lists")  # fmt: skip
        image.platform = listed[0] if listed else None
    return image


def _cycle(images: Mapping[str, PipelineImage]) -> list[str]:
    """A dependency cycle (its names, the first one repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        path.append(name)
        for dep in images[name].depends_on:
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return []

    for name in images:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return []


@dataclass
class ImageResult:
    """How one image of the pipeline ended: built, failed, skipped (what it depends on failed) or cancelled."""

    name: str
    status: str
    image_id: str | None = None
    error: str | None = None
    seconds: float = 0.0
    pushed: list[str] = field(default_factory=list)


async def run_pipeline(
    pipeline: Pipeline,
    store: ImageStore,
    work: Path,
    progress: Callable[[str], Progress],
    *,
    only: Sequence[str] = (),
    fail_fast: bool = True,
    push: bool = False,
    insecure: Sequence[str] = (),
) -> list[ImageResult]:
    """Build the selected images, each once every image it depends on is built; then, when all were built and
    ``push`` (or ``push.after_all``) asks it, push every tag. ``progress(name)`` reports one image's build."""
    selected = pipeline.select(only)
    results: dict[str, ImageResult] = {}
    running: dict[asyncio.Task[ImageResult], str] = {}
    waiting = list(selected)

    def ready(name: str) -> bool | None:
        """True when every dependency is built, None when one cannot be (failed, skipped, cancelled)."""
        deps = [d for d in pipeline.images[name].depends_on if d in selected]
        if any(d in results and results[d].status != "built" for d in deps):
            return None
        return all(d in results for d in deps)

    try:
        while waiting or running:
            for name in list(waiting):
                state = ready(name)
                if state is None:
                    failed = [d for d in pipeline.images[name].depends_on if d in results]
                    results[name] = ImageResult(name, "skipped", error=f"not built: {', '.join(failed)} failed")
                    waiting.remove(name)
                elif state:
                    waiting.remove(name)
                    task = asyncio.create_task(_build_one(pipeline.images[name], store, work, progress(name), insecure))
                    running[task] = name
            if not running:
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                result = task.result()
                results[result.name] = result
                del running[task]
                if result.status != "built" and fail_fast:
                    for name in waiting:
                        results[name] = ImageResult(name, "skipped", error=f"not built: {result.name} failed")
                    waiting.clear()
                    await _cancel(running, results)
    finally:
        await _cancel(running, results)
    ordered = [results[n] for n in selected]
    if (push or pipeline.push_after_all) and all(r.status == "built" for r in ordered):
        from zlayer.images import push as push_image

        for result in ordered:
            for tag in pipeline.images[result.name].tags:
                try:
                    await push_image(store, tag, insecure=tuple(insecure))
                except ZLayerError as e:
                    result.status, result.error = "push failed", f"{tag}: {e}"
                    break
                result.pushed.append(tag)
    return ordered


async def _cancel(running: dict[asyncio.Task[ImageResult], str], results: dict[str, ImageResult]) -> None:
    for task in running:
        task.cancel()
    for task, name in list(running.items()):
        try:
            results[name] = await task
        except asyncio.CancelledError:
            results[name] = ImageResult(name, "cancelled", error="cancelled: another image failed")
    running.clear()


async def _build_one(
    image: PipelineImage, store: ImageStore, work: Path, progress: Progress, insecure: Sequence[str]
) -> ImageResult:
    started = time.monotonic()
    for attempt in range(image.retries + 1):
        try:
            built = await Builder(store, work, progress).build(image.options(insecure))
        except BuildError as e:  # a step failed: run it again (what came before is in the cache)
            if attempt < image.retries:
                continue
            return ImageResult(image.name, "failed", error=str(e), seconds=time.monotonic() - started)
        except ZLayerError as e:  # the same input fails the same way: no retry
            return ImageResult(image.name, "failed", error=str(e), seconds=time.monotonic() - started)
        return ImageResult(image.name, "built", built.id if built is not None else None,
                           seconds=time.monotonic() - started)  # fmt: skip
    raise AssertionError("unreachable")


__all__ = [
    "PIPELINE_FILES",
    "ImageResult",
    "Pipeline",
    "PipelineImage",
    "find_pipeline",
    "load_pipeline",
    "parse_pipeline",
    "run_pipeline",
]
