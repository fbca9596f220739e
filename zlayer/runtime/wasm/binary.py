"""What a ``.wasm`` file is, from its bytes: a core module or a component (by the header's version/layer field), its
imports and exports, the WASI generation and world it targets, and whether it is valid at all.

Every refusal is a :class:`zlayer.errors.ImageError` naming the file and what is wrong with it (too short, not WASM,
an unknown header, where validation failed), never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zlayer.errors import ImageError

Kind = Literal["module", "component"]

MAGIC = b"\0asm"
MODULE_HEADER = b"\x01\x00\x00\x00"  # version 1, layer 0: a core module
COMPONENT_LAYER = b"\x01\x00"  # layer 1: a component (its version field is the component-model draft's)

# The interfaces a WASIp2 component is run by, and the world ZLayer names for each.
HTTP_HANDLER = "wasi:http/incoming-handler"
CLI_RUN = "wasi:cli/run"


def kind_of(head: bytes, where: str = "") -> Kind:
    """``module`` or ``component`` from the first 8 bytes; anything else is refused naming ``where``."""
    at = where or "wasm binary"
    if len(head) < 8:
        raise ImageError(f"{at}: truncated: {len(head)} bytes, a WASM header is 8", where=where or None)
    if head[:4] != MAGIC:
        raise ImageError(f"{at}: not a WASM binary (magic {head[:4].hex()}, expected 0061736d)", where=where or None)
    if head[4:8] == MODULE_HEADER:
        return "module"
    if head[6:8] == COMPONENT_LAYER:
        return "component"
    raise ImageError(f"{at}: unknown WASM header version/layer {head[4:8].hex()}", where=where or None)


def file_kind(path: Path) -> Kind:
    try:
        with open(path, "rb") as f:
            return kind_of(f.read(8), str(path))
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}", where=str(path)) from e


@dataclass
class WasmInfo:
    """What ``zlayer wasm info`` prints and the driver decides by."""

    path: str
    kind: Kind
    size: int
    imports: list[str] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)

    @property
    def wasi(self) -> str:
        """``preview1`` for a module importing ``wasi_snapshot_preview1``, ``preview2`` for a component, else
        ``none``."""
        if self.kind == "component":
            return "preview2"
        return "preview1" if any(i.startswith("wasi_snapshot_preview1.") for i in self.imports) else "none"

    @property
    def world(self) -> str:
        """The world it is run as: ``wasi:cli/command`` (a ``_start`` module or a ``wasi:cli/run`` component),
        ``wasi:http/proxy`` (a component exporting ``wasi:http/incoming-handler``), else ``reactor``."""
        if self.kind == "module":
            return "wasi:cli/command" if "_start" in self.exports else "reactor"
        if any(e.split("@")[0] == HTTP_HANDLER for e in self.exports):
            return "wasi:http/proxy"
        if any(e.split("@")[0] == CLI_RUN for e in self.exports):
            return "wasi:cli/command"
        return "reactor"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "wasi": self.wasi,
            "world": self.world,
            "imports": self.imports,
            "exports": self.exports,
        }


def inspect_wasm(path: Path) -> WasmInfo:
    """Validate and describe ``path`` (compiling it once with a plain engine)."""
    import wasmtime

    kind = file_kind(path)
    data = path.read_bytes()
    try:
        if kind == "module":
            engine = wasmtime.Engine()
            wasmtime.Module.validate(engine, data)
            module = wasmtime.Module(engine, data)
            imports = [f"{i.module}.{i.name}" for i in module.imports]
            exports = [str(e.name) for e in module.exports]
        else:
            from wasmtime import component

            cfg = wasmtime.Config()
            cfg.wasm_component_model = True
            engine = wasmtime.Engine(cfg)
            comp = component.Component(engine, data)
            ty = comp.type
            imports = sorted(ty.imports(engine))
            exports = sorted(ty.exports(engine))
    except wasmtime.WasmtimeError as e:
        raise ImageError(f"{path}: invalid {kind}: {_first_line(str(e))}", where=str(path)) from None
    return WasmInfo(str(path), kind, len(data), imports, exports)


def _first_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return "; ".join(lines[:3]) if lines else "unknown error"


__all__ = ["CLI_RUN", "HTTP_HANDLER", "Kind", "WasmInfo", "file_kind", "inspect_wasm", "kind_of"]
