"""A curl-like HTTP checker on requests + tenacity, with curl-style transcripts on failure.

    http.get(proc.url("/health")).expect(200, contains="ok")

``get``/``request`` retry connection errors (the service may still be starting) until
``retry_for`` seconds pass, through the one waiting primitive. ``Response.expect``
raises :class:`~pytest_flake.errors.CheckFailed` (an ``AssertionError``) whose message
is what ``curl -v`` would have shown: request line and headers, status line, response
headers and the first bytes of the body.
"""

from __future__ import annotations

import json as jsonlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from .errors import CheckFailed, FlakeTimeout
from .waiting import wait_for

log = logging.getLogger(__name__)

BODY_PREVIEW = 1024
_MISSING = object()


def transcript(response: requests.Response, body_bytes: int = BODY_PREVIEW) -> str:
    """``curl -v``-style text of one exchange: ``> GET /path``, ``< HTTP/1.1 200 OK``..."""
    req = response.request
    parts = urlsplit(req.url or "")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"> {req.method} {target} HTTP/1.1"]
    lines += [f"> {k}: {v}" for k, v in req.headers.items()]
    lines.append(">")
    if req.body:
        body = req.body if isinstance(req.body, str) else req.body.decode(errors="replace")
        lines += [f"> {line}" for line in body[:body_bytes].splitlines()]
    version = {10: "HTTP/1.0", 11: "HTTP/1.1"}.get(getattr(response.raw, "version", 11), "HTTP/1.1")
    lines.append(f"< {version} {response.status_code} {response.reason or ''}".rstrip())
    lines += [f"< {k}: {v}" for k, v in response.headers.items()]
    lines.append("<")
    content = response.content or b""
    text = content[:body_bytes].decode(errors="replace")
    lines += text.splitlines() or ["(empty body)"]
    if len(content) > body_bytes:
        lines.append(f"... ({len(content) - body_bytes} more bytes)")
    return "\n".join(lines)


def _json_matches(expected: Any, actual: Any) -> bool:
    """Dicts match as subsets (recursively); everything else by equality."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _json_matches(value, actual[key]) for key, value in expected.items())
    return bool(expected == actual)


class Response:
    """An HTTP response with curl-like assertions; ``expect`` returns ``self`` to chain."""

    def __init__(self, response: requests.Response, elapsed_retrying: float = 0.0, attempts: int = 1) -> None:
        self.raw = response
        self.attempts = attempts
        self.elapsed_retrying = elapsed_retrying
        self.shown = False  # its transcript is in a raised CheckFailed already

    @property
    def status_code(self) -> int:
        return int(self.raw.status_code)

    @property
    def text(self) -> str:
        return str(self.raw.text)

    @property
    def headers(self) -> Mapping[str, str]:
        return self.raw.headers

    @property
    def url(self) -> str:
        return str(self.raw.url)

    def json(self) -> Any:
        return self.raw.json()

    def transcript(self) -> str:
        """The exchange as ``curl -v`` shows it."""
        return transcript(self.raw)

    def expect(
        self,
        status: int | Iterable[int] | None = 200,
        contains: str | Iterable[str] | None = None,
        json: Any = _MISSING,
        headers: Mapping[str, str] | None = None,
        where: Callable[[Response], bool] | None = None,
    ) -> Response:
        """Assert the status, body substrings, JSON (dicts as subsets) and headers.

        Every failed expectation is listed in one :class:`CheckFailed` with the transcript.
        """
        __tracebackhide__ = True
        problems: list[str] = []
        if status is not None:
            allowed = {status} if isinstance(status, int) else set(status)
            if self.status_code not in allowed:
                want = " or ".join(str(s) for s in sorted(allowed))
                problems.append(f"status {self.status_code}, expected {want}")
        if contains is not None:
            needles = [contains] if isinstance(contains, str) else list(contains)
            for needle in needles:
                if needle not in self.text:
                    problems.append(f"body does not contain {needle!r}")
        if json is not _MISSING:
            try:
                actual = self.json()
            except ValueError:
                problems.append("body is not JSON")
            else:
                if not _json_matches(json, actual):
                    problems.append(f"JSON {jsonlib.dumps(actual)[:300]} does not match {jsonlib.dumps(json)[:300]}")
        for name, value in (headers or {}).items():
            got = self.headers.get(name)
            if got is None:
                problems.append(f"no header {name!r}")
            elif value not in got:
                problems.append(f"header {name}: {got!r}, expected {value!r}")
        if where is not None and not where(self):
            problems.append("the 'where' predicate returned False")
        if problems:
            self.shown = True
            raise CheckFailed(f"{self.raw.request.method} {self.url}: " + "; ".join(problems) + "\n"
                              + self.transcript())
        return self

    def __repr__(self) -> str:
        return f"<Response {self.raw.request.method} {self.url} {self.status_code}>"


class HttpChecker:
    """The ``http`` fixture: ``get``/``request`` like curl, retrying until the service answers."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies: traffic stays on this machine
        self.history: list[Response] = []

    def request(self, method: str, url: str, *, retry_for: float = 10.0, **kwargs: Any) -> Response:
        """Send a request; connection errors are retried for ``retry_for`` seconds.

        When the service never answers, raises :class:`CheckFailed` with curl's words
        (``* connect to HOST port PORT failed``). Other arguments go to ``requests``.
        """
        __tracebackhide__ = True
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", False)
        attempts = 0

        def attempt() -> requests.Response:
            nonlocal attempts
            attempts += 1
            return self.session.request(method, url, **kwargs)

        parts = urlsplit(url)
        started = time.monotonic()
        try:
            if retry_for > 0:
                raw = wait_for(attempt, what=f"{method} {url}", timeout=retry_for, interval=0.1, max_interval=1.0,
                               transient=(requests.ConnectionError,))
            else:
                raw = attempt()
        except (FlakeTimeout, requests.ConnectionError) as exc:
            cause = exc.__cause__ or exc
            raise CheckFailed(
                f"{method} {url}: no answer\n"
                f"* connect to {parts.hostname} port {parts.port or (443 if parts.scheme == 'https' else 80)} failed "
                f"({type(cause).__name__}), {attempts} attempt(s) in {time.monotonic() - started:.1f}s") from None
        response = Response(raw, time.monotonic() - started, attempts)
        log.debug("%s %s -> %d (%d attempts)", method, url, response.status_code, attempts)
        self.history.append(response)
        return response

    def get(self, url: str, *, retry_for: float = 10.0, **kwargs: Any) -> Response:
        """``GET url``; see :meth:`request`."""
        __tracebackhide__ = True
        return self.request("GET", url, retry_for=retry_for, **kwargs)

    def post(self, url: str, *, retry_for: float = 10.0, **kwargs: Any) -> Response:
        """``POST url``; see :meth:`request`."""
        __tracebackhide__ = True
        return self.request("POST", url, retry_for=retry_for, **kwargs)

    def head(self, url: str, *, retry_for: float = 10.0, **kwargs: Any) -> Response:
        """``HEAD url``; see :meth:`request`."""
        __tracebackhide__ = True
        return self.request("HEAD", url, retry_for=retry_for, **kwargs)

    def transcripts(self) -> str:
        """Every exchange of this test, for the report of a failed test."""
        return "\n\n".join(r.transcript() for r in self.history if not r.shown)

    def close(self) -> None:
        self.session.close()
