"""Runtime templates: a Dockerfile per language runtime (ZLayer's set), chosen by name (``--runtime``,
``runtime:`` in a ZImagefile) or detected from the files at the root of the build context.

The base images are named without a registry (``node:20-alpine``): as everywhere in zlayer, such a name comes from
the local store or from ``ZLAYER_DEFAULT_REGISTRY`` (ZLayer's rule), never implicitly from Docker Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    detect: tuple[str, ...]
    dockerfile: str


def _node(version: str) -> str:
    return f"""\
FROM node:{version}-alpine AS builder
WORKDIR /app
COPY package*.json ./
RUN if [ -f package-lock.json ]; then npm ci; else npm install; fi
COPY . .
RUN npm run build --if-present && npm prune --omit=dev

FROM node:{version}-alpine
WORKDIR /app
ENV NODE_ENV=production
COPY --from=builder --chown=node:node /app /app
USER node
EXPOSE 3000
CMD ["node", "index.js"]
"""


def _python(version: str) -> str:
    return f"""\
FROM python:{version}-slim AS builder
WORKDIR /app
COPY . .
RUN python -m venv /venv && \\
    if [ -f requirements.txt ]; then /venv/bin/pip install --no-cache-dir -r requirements.txt; \\
    elif [ -f pyproject.toml ] || [ -f setup.py ]; then /venv/bin/pip install --no-cache-dir .; fi

FROM python:{version}-slim
WORKDIR /app
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY --from=builder /venv /venv
COPY --from=builder /app /app
RUN useradd --system --uid 10001 app
USER app
EXPOSE 8000
CMD ["python", "main.py"]
"""


_RUST = """\
FROM rust:1-alpine AS builder
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release && mkdir -p /out && \\
    find target/release -maxdepth 1 -type f -perm -u+x -exec cp {} /out/app \\;

FROM alpine:3
COPY --from=builder /out/app /usr/local/bin/app
RUN adduser -D -u 10001 app
USER app
CMD ["/usr/local/bin/app"]
"""

_GO = """\
FROM golang:1-alpine AS builder
WORKDIR /src
COPY go.* ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/app .

FROM alpine:3
COPY --from=builder /out/app /usr/local/bin/app
RUN adduser -D -u 10001 app
USER app
CMD ["/usr/local/bin/app"]
"""

_DENO = """\
FROM denoland/deno:latest
WORKDIR /app
COPY . .
RUN deno cache main.ts
USER deno
EXPOSE 8000
CMD ["run", "--allow-net", "--allow-env", "main.ts"]
"""

_BUN = """\
FROM oven/bun:1 AS builder
WORKDIR /app
COPY package.json bun.lockb* ./
RUN bun install --frozen-lockfile --production
COPY . .

FROM oven/bun:1
WORKDIR /app
COPY --from=builder /app /app
USER bun
EXPOSE 3000
CMD ["bun", "run", "index.ts"]
"""

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("node20", "Node.js 20 (LTS), Alpine, production dependencies only", ("package.json",), _node("20")),
        Template("node22", "Node.js 22, Alpine, production dependencies only", ("package.json",), _node("22")),
        Template("python312", "Python 3.12, slim, a virtualenv of the project's requirements",
                 ("requirements.txt", "pyproject.toml", "setup.py"), _python("3.12")),
        Template("python313", "Python 3.13, slim, a virtualenv of the project's requirements",
                 ("requirements.txt", "pyproject.toml", "setup.py"), _python("3.13")),
        Template("rust", "Rust, a static musl binary on Alpine", ("Cargo.toml",), _RUST),
        Template("go", "Go, a static binary on Alpine", ("go.mod",), _GO),
        Template("deno", "Deno, the official image", ("deno.json", "deno.jsonc"), _DENO),
        Template("bun", "Bun, the official image", ("bun.lockb",), _BUN),
    )
}  # fmt: skip

ALIASES = {"node": "node20", "nodejs20": "node20", "node-20": "node20", "nodejs22": "node22", "node-22": "node22",
           "python": "python312", "python3.12": "python312", "python-312": "python312", "python3.13": "python313",
           "python-313": "python313", "rs": "rust", "golang": "go"}  # fmt: skip


def template(name: str) -> Template | None:
    """The template of this name (or one of ZLayer's aliases, any case)."""
    key = name.lower()
    return TEMPLATES.get(ALIASES.get(key, key))


def dockerfiles() -> dict[str, str]:
    """Every name a template answers to (aliases included) → its Dockerfile: what ``runtime:`` resolves against."""
    out = {name: t.dockerfile for name, t in TEMPLATES.items()}
    out.update({alias: TEMPLATES[name].dockerfile for alias, name in ALIASES.items()})
    return out


def detect(context: Path) -> Template | None:
    """ZLayer's detection order over the context's top level: Bun and Deno before Node (they have a package.json
    too), then Deno, Rust, Python (3.13 when ``.python-version`` says so), Go; None when nothing matches."""

    def has(*names: str) -> bool:
        return any((context / n).exists() for n in names)

    if has("package.json"):
        if has("bun.lockb"):
            return TEMPLATES["bun"]
        if has("deno.json", "deno.jsonc"):
            return TEMPLATES["deno"]
        return TEMPLATES["node22"] if _version(context, ".nvmrc", ".node-version").lstrip("v").startswith(
            "22") else TEMPLATES["node20"]  # fmt: skip
    if has("deno.json", "deno.jsonc", "deno.lock"):
        return TEMPLATES["deno"]
    if has("Cargo.toml"):
        return TEMPLATES["rust"]
    if has("pyproject.toml", "requirements.txt", "setup.py", "Pipfile", "poetry.lock"):
        return TEMPLATES["python313"] if _version(context, ".python-version").startswith("3.13") else TEMPLATES[
            "python312"]  # fmt: skip
    if has("go.mod"):
        return TEMPLATES["go"]
    return None


def _version(context: Path, *names: str) -> str:
    for n in names:
        try:
            text = (context / n).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return ""
