"""OCI distribution client (aiohttp): pulls and pushes with anonymous, basic and bearer-token auth.

Auth follows the registry's ``WWW-Authenticate`` challenge: ``Basic`` gets the credentials, ``Bearer`` sends us to
the token realm with the scope of the request (``repository:NAME:pull[,push]``) and the token is reused for that
scope until the registry refuses it. Credentials come from flags or ``~/.docker/config.json``, its credential
helpers included. Registries on loopback and ones named in ``insecure`` are spoken to over plain HTTP; all others
over HTTPS with the system CAs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from zlayer.errors import AuthError, ImageError, NotFoundError, RegistryError, ZLayerError
from zlayer.images.manifest import MAX_MANIFEST_BYTES, check_size, parse_json, size_text
from zlayer.images.reference import Reference
from zlayer.limits import load_json

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MAX_TOKEN_BYTES = 1 << 20  # a token answer is a few KiB; containers/image reads 1 MiB at most
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')
Progress = Callable[[str, int, int], None]  # (digest, bytes done, total)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


HUB_SERVER = "https://index.docker.io/v1/"
HELPER_TIMEOUT = 30.0


def docker_config_credentials(registry: str, config_path: Path | None = None) -> Credentials | None:
    """Credentials for a registry from ``~/.docker/config.json``, as Docker finds them: a ``credHelpers`` entry for
    the registry, else the ``credsStore`` helper, else ``auths.<host>`` (``auth`` or ``username``/``password``)."""
    path = config_path or Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        doc = load_json(path.read_bytes(), where=str(path))
    except (OSError, ZLayerError):
        return None
    if not isinstance(doc, dict):
        return None
    hub = registry in ("docker.io", "registry-1.docker.io", "index.docker.io")
    server = HUB_SERVER if hub else registry
    helpers = doc.get("credHelpers") or {}
    helper = helpers.get(registry) or (helpers.get("index.docker.io") if hub else None) or doc.get("credsStore")
    if isinstance(helper, str) and helper:
        return helper_credentials(helper, server, path)
    auths = doc.get("auths") or {}
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if hub:
        keys.append(HUB_SERVER)
    for key in keys:
        entry = auths.get(key)
        if entry and entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return Credentials(user, password)
        if entry and entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
    return None


def helper_credentials(helper: str, server: str, config_path: Path) -> Credentials | None:
    """Asks ``docker-credential-HELPER get`` for a server's credentials (the docker-credential-helpers protocol:
    the server on stdin, ``{"Username", "Secret"}`` on stdout). None when the helper has none for it."""
    exe = f"docker-credential-{helper}"
    where = f"{config_path} names credential helper {helper!r} for {server}"
    try:
        res = subprocess.run(
            [exe, "get"], input=server, capture_output=True, text=True, timeout=HELPER_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise AuthError(f"{where}, but {exe} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"{where}, but {exe} gave no answer within {HELPER_TIMEOUT:.0f}s") from None
    if res.returncode != 0:
        said = (res.stdout.strip() or res.stderr.strip()).splitlines()
        if said and "credentials not found" in said[0].lower():
            return None
        raise AuthError(f"{exe} get {server} failed (exit {res.returncode}): {said[0] if said else 'no message'}")
    try:
        answer = load_json(res.stdout, where=exe)
        user, secret = str(answer["Username"]), str(answer["Secret"])
    except (ZLayerError, KeyError, TypeError):
        raise AuthError(f"{exe} get {server} did not answer with JSON holding Username and Secret") from None
    if user == "<token>":
        raise AuthError(f"{exe} gave an identity token for {server}; zlayer takes a username and password only")
    return Credentials(user, secret)


def is_insecure(host: str, insecure: tuple[str, ...] = ()) -> bool:
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    env = tuple(h for h in os.environ.get("ZLAYER_INSECURE_REGISTRIES", "").split(",") if h)
    return bare in ("localhost", "[::1]") or bare.startswith("127.") or host in insecure + env


RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRY_DELAYS = (0.2, 0.8)  # pauses before the second and third try of a GET/HEAD answered 429/5xx
MAX_RETRY_AFTER = 5.0


def _retry_wait(retry_after: str | None, default: float) -> float | None:
    """Seconds to wait before trying again: the registry's Retry-After when short enough, None when too long."""
    if not retry_after:
        return default
    try:
        wait = float(retry_after)
    except ValueError:
        return default  # an HTTP date: not worth parsing for a pause we cap anyway
    return None if wait > MAX_RETRY_AFTER else max(wait, 0.0)


def _describe_status(status: int, what: str, host: str) -> str:
    reason = {
        401: "authentication required or credentials refused",
        403: "access denied",
        404: "not found",
        429: "rate limited by the registry; try again later",
    }.get(status, "registry error" if status >= 500 else "unexpected answer")
    return f"{what}: {host} answered {status} ({reason})"


class RegistryClient:
    """One registry, one repository scope at a time; reuse it for all requests of a pull or push."""

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: tuple[str, ...] = (),
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.host = host
        self.scheme = "http" if is_insecure(host, insecure) else "https"
        self.credentials = credentials or docker_config_credentials(host)
        self._session = session
        self._own_session = session is None
        self._tokens: dict[str, str] = {}
        self._basic = False

    async def __aenter__(self) -> RegistryClient:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use RegistryClient as an async context manager"
        return self._session

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{path}"

    # -- auth ---------------------------------------------------------------------------------------------------

    def _auth_header(self, scope: str) -> dict[str, str]:
        if scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        if self._basic and self.credentials:
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    async def _answer_challenge(self, challenge: str, scope: str, what: str) -> None:
        kind, _, params = challenge.partition(" ")
        if kind.lower() == "basic":
            if not self.credentials:
                raise AuthError(f"{what}: {self.host} needs a username and password", hint="pass -u/-p or docker login")
            if self._basic:
                raise AuthError(
                    f"{what}: {self.host} answered 401: it refused the credentials of {self.credentials.username}"
                )
            self._basic = True
            return
        if kind.lower() != "bearer":
            raise AuthError(f"{what}: {self.host} asks for unsupported authentication {kind!r}")
        fields = dict(_CHALLENGE_RE.findall(params))
        realm = fields.get("realm")
        if not realm:
            raise AuthError(f"{what}: {self.host} sent a bearer challenge without a realm")
        # Ask for the scope every request sharing this token needs, plus what the challenge names if it differs:
        # a HEAD of a blob during a push is challenged for 'pull' only, and a token cached for 'pull,push' that
        # only allows pull would get the upload refused.
        query = [("service", fields["service"])] if "service" in fields else []
        query.append(("scope", scope))
        if fields.get("scope") and fields["scope"] != scope:
            query.append(("scope", fields["scope"]))
        headers = {}
        if self.credentials:
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        try:
            async with self.session.get(realm, params=query, headers=headers) as resp:
                if resp.status != 200:
                    # the token service answered, not the registry: say so, and whose credentials it refused
                    who = f" for user {self.credentials.username}" if self.credentials else " without credentials"
                    raise AuthError(
                        _describe_status(resp.status, f"{what}: token{who}", f"the token service {realm}"),
                        hint=None if self.credentials else "pass -u/-p or docker login",
                    )
                raw = await self._read_at_most(resp, MAX_TOKEN_BYTES + 1, f"{what}: the token service {realm}")
        except aiohttp.ClientError as e:
            raise RegistryError(f"{what}: cannot reach the token service {realm}: {e}") from e
        if len(raw) > MAX_TOKEN_BYTES:
            raise AuthError(f"{what}: the token service {realm} answered more than {size_text(MAX_TOKEN_BYTES)}")
        body = parse_json(raw, f"{what}: the token service {realm}")
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token or not isinstance(token, str):
            raise AuthError(f"{what}: the token service {realm} returned no token")
        self._tokens[scope] = token

    async def request(
        self, method: str, url: str, *, scope: str, what: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> aiohttp.ClientResponse:
        """Send a request, answering at most one auth challenge; the caller closes the response.

        A GET or HEAD answered 429 or 5xx is tried again after a short pause (or the ``Retry-After`` the registry
        asks for, up to a few seconds), as a registry briefly overloaded should not fail a deploy; the last answer
        is returned either way, and :meth:`check` turns it into a one-line error.
        """
        for delay in (*RETRY_DELAYS, None):
            resp = await self._request_with_auth(method, url, scope=scope, what=what, headers=headers, **kw)
            if resp.status not in RETRY_STATUSES or method not in ("GET", "HEAD") or delay is None:
                return resp
            wait = _retry_wait(resp.headers.get("Retry-After"), delay)
            if wait is None:
                return resp  # the registry asks for a longer pause than a pull should sit through
            resp.release()
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _request_with_auth(
        self, method: str, url: str, *, scope: str, what: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> aiohttp.ClientResponse:
        body: Callable[[], Any] | None = kw.pop("body", None)
        for attempt in range(3):
            hdrs = {**(headers or {}), **self._auth_header(scope)}
            if body is not None:
                kw["data"] = body()
            try:
                resp = await self.session.request(method, url, headers=hdrs, **kw)
            except aiohttp.ClientError as e:
                raise RegistryError(f"{what}: cannot reach {self.host}: {e}") from e
            if resp.status == 401 and attempt < 2:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                if self._auth_header(scope).get("Authorization") != hdrs.get("Authorization"):
                    continue  # a concurrent request answered the challenge meanwhile: use its answer
                self._tokens.pop(scope, None)
                await self._answer_challenge(challenge, scope, what)
                continue
            return resp
        raise AuthError(f"{what}: {self.host} refused the credentials")

    @staticmethod
    def check(resp: aiohttp.ClientResponse, what: str, host: str, ok: tuple[int, ...] = (200,)) -> None:
        if resp.status in ok:
            return
        resp.release()
        message = _describe_status(resp.status, what, host)
        if resp.status == 429 and resp.headers.get("Retry-After"):
            message += f"; it asks to wait {resp.headers['Retry-After']} s"
        if resp.status in (401, 403):
            raise AuthError(message)
        if resp.status == 404:
            raise NotFoundError(message)
        raise RegistryError(message)

    # -- pull ---------------------------------------------------------------------------------------------------

    async def manifest(
        self, ref: Reference, selector: str | None = None, size: int | None = None
    ) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index by tag or digest; one bigger than a manifest may be (or
        than ``size``, its descriptor's) is refused without reading it whole."""
        sel = selector or ref.selector
        scope = f"repository:{ref.repository}:pull"
        what = (
            f"manifest {ref.repository}:{sel}" if not sel.startswith("sha256:") else f"manifest {ref.repository}@{sel}"
        )
        resp = await self.request(
            "GET",
            self.url(f"{ref.repository}/manifests/{sel}"),
            scope=scope,
            what=what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        self.check(resp, what, self.host)
        limit = MAX_MANIFEST_BYTES if size is None else min(size, MAX_MANIFEST_BYTES)
        async with resp:
            if resp.content_length is not None and resp.content_length > limit:
                self._too_long(what, resp.content_length, size)
            body = await self._read_at_most(resp, limit + 1, what)
            media = resp.headers.get("Content-Type", "").split(";")[0]
        if len(body) > limit:
            self._too_long(what, None, size)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if size is not None:
            check_size(sel, size, len(body))
        if sel.startswith("sha256:") and digest != sel:
            raise ImageError(f"{what}: content does not match its digest (got {digest})")
        if not media or media == "application/json":
            doc = parse_json(body, what)
            media = doc.get("mediaType", media) if isinstance(doc, dict) else media
        return body, str(media), digest

    def _too_long(self, what: str, length: int | None, size: int | None) -> None:
        sent = f"{length} bytes" if length is not None else "more"
        if size is not None and size <= MAX_MANIFEST_BYTES:
            raise ImageError(f"{what}: {self.host} sends {sent}, its descriptor says {size} bytes; refused")
        raise ImageError(
            f"{what}: {self.host} sends {sent}, more than the {size_text(MAX_MANIFEST_BYTES)} a manifest may have; "
            "refused"
        )

    async def _read_at_most(self, resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        body = bytearray()
        try:
            while len(body) < limit and (chunk := await resp.content.read(min(1 << 16, limit - len(body)))):
                body += chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise RegistryError(f"{what}: the answer from {self.host} broke off: {e or type(e).__name__}") from e
        return bytes(body)

    async def head_manifest_digest(self, ref: Reference) -> str | None:
        scope = f"repository:{ref.repository}:pull"
        what = f"manifest {ref.repository}:{ref.selector}"
        resp = await self.request(
            "HEAD",
            self.url(f"{ref.repository}/manifests/{ref.selector}"),
            scope=scope,
            what=what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        async with resp:
            return resp.headers.get("Docker-Content-Digest") if resp.status == 200 else None

    async def blob_chunks(self, ref: Reference, digest: str, offset: int, size: int) -> AsyncIterator[bytes]:
        """Yield the chunks of a blob of ``size`` bytes (its descriptor's) from ``offset`` (a Range request when
        resuming). An answer announcing another length is refused before its body is read, and one that runs past
        ``size`` is cut off there: an ImageError naming the blob and both sizes."""
        scope = f"repository:{ref.repository}:pull"
        what = f"blob {digest} of {ref.repository}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = await self.request(
            "GET", self.url(f"{ref.repository}/blobs/{digest}"), scope=scope, what=what, headers=headers
        )
        if offset and resp.status == 416:
            # the partial download is as long as the blob or longer (killed between the last byte and the rename,
            # or junk): nothing is left to fetch from there, so start over rather than fail every later pull
            resp.release()
            raise _RangeIgnored()
        self.check(resp, what, self.host, ok=(200, 206))
        async with resp:
            if offset and resp.status == 200:
                raise _RangeIgnored()
            if resp.content_length is not None:
                check_size(digest, size, offset + resp.content_length)
            done = offset
            try:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    done += len(chunk)
                    if done > size:
                        check_size(digest, size, size, more=True)
                    yield chunk
            except (TimeoutError, aiohttp.ClientError) as e:
                raise RegistryError(
                    f"{what}: the download from {self.host} broke off after {done} of {size} bytes: "
                    f"{e or type(e).__name__}",
                    hint="pull again: the download resumes where it stopped",
                ) from e

    # -- push ---------------------------------------------------------------------------------------------------

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        scope = f"repository:{ref.repository}:pull,push"
        resp = await self.request(
            "HEAD", self.url(f"{ref.repository}/blobs/{digest}"), scope=scope, what=f"blob {digest} in {ref.repository}"
        )
        async with resp:
            return resp.status == 200

    async def upload_blob(self, ref: Reference, digest: str, path: Path) -> None:
        scope = f"repository:{ref.repository}:pull,push"
        what = f"upload of blob {digest} to {ref.repository}"
        resp = await self.request("POST", self.url(f"{ref.repository}/blobs/uploads/"), scope=scope, what=what)
        self.check(resp, what, self.host, ok=(202,))
        async with resp:
            location = resp.headers.get("Location", "")
        if not location:
            raise RegistryError(f"{what}: {self.host} gave no upload location")
        if location.startswith("/"):
            location = f"{self.scheme}://{self.host}{location}"
        sep = "&" if "?" in location else "?"
        size = path.stat().st_size
        # a fresh body per try: a token that expired since the POST gets the PUT a 401, and the retry with the new
        # token must send the blob again from its first byte (a shared file object would be spent or closed)
        resp = await self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            scope=scope,
            what=what,
            body=lambda: _file_chunks(path),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        self.check(resp, what, self.host, ok=(201, 204))
        resp.release()

    async def put_manifest(self, ref: Reference, body: bytes, media_type: str) -> None:
        scope = f"repository:{ref.repository}:pull,push"
        what = f"manifest {ref.repository}:{ref.selector}"
        resp = await self.request(
            "PUT",
            self.url(f"{ref.repository}/manifests/{ref.selector}"),
            scope=scope,
            what=what,
            data=body,
            headers={"Content-Type": media_type},
        )
        self.check(resp, what, self.host, ok=(201, 202, 204))
        resp.release()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, 1 << 20):
            yield chunk


class _RangeIgnored(Exception):
    """The registry answered a Range request with the whole blob; start over from byte 0."""


async def gather_bounded(limit: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def run(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))
