"""`kind: http` tools: one request to the host the agent file names, its answer cut to size.

The LLM only ever fills parameters: they are URL-encoded into the URL's path and query (so a
value cannot add a path segment or change the host), placed as JSON values in the body, and
refused in headers when they hold a line break. Redirects are not followed (a 3xx is a failure:
it could lead to another host), the body is read up to `max_response_bytes`, and what the LLM
sees is the `result` part of it, never more than `max_result_chars`. Failures are short, fixed
sentences: never a URL, a header or an exception's text, which could hold a secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from livekit.agents.utils import http_context

from worker.tools.failure import ToolFailedError
from worker.tools.spec import SECRET, HttpTool
from worker.untrusted import UntrustedJSONError, loads_bounded

logger = logging.getLogger("worker.tools")

RETRY_INTERVAL = 0.3


class HttpCall:
    """Runs one `http` tool with the worker's environment (its `${VAR}` secrets)."""

    def __init__(self, spec: HttpTool, env: Mapping[str, str]) -> None:
        self.spec = spec
        self._env = env

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        url = self._url(arguments)
        headers = {
            key: self._text(value, arguments, header=True)
            for key, value in self.spec.headers.items()
        }
        body = None if self.spec.body is None else self._json(self.spec.body, arguments)
        for attempt in range(self.spec.retries + 1):
            try:
                # the call's shared session: a session per request would build an SSL context
                # on the event loop each time (100-250 ms measured, audio stalls)
                return await self._request(http_context.http_session(), url, headers, body)
            except _RetryableError as exc:
                if attempt == self.spec.retries:
                    raise ToolFailedError(str(exc)) from None
                logger.info("tool %s: %s, trying again", self.spec.name, exc)
                await asyncio.sleep(RETRY_INTERVAL)
        raise AssertionError("unreachable")

    async def _request(
        self, http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: Any
    ) -> str:
        try:
            async with http.request(
                self.spec.method,
                url,
                headers=headers,
                json=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.spec.timeout),
            ) as response:
                if response.status >= 500:
                    raise _RetryableError(f"the service failed (HTTP {response.status})")
                if 300 <= response.status < 400:
                    raise ToolFailedError(
                        f"the service answered with a redirect (HTTP {response.status}), which is "
                        "not followed"
                    )
                if response.status >= 400:
                    raise ToolFailedError(
                        f"the service refused the request (HTTP {response.status})"
                    )
                data = await self._read(response)
                kind = response.content_type
        except TimeoutError:
            raise _RetryableError(
                f"the service did not answer within {self.spec.timeout:g} s"
            ) from None
        except aiohttp.ClientError:
            raise _RetryableError("the service could not be reached") from None
        return self._result(data, kind)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self.spec.max_response_bytes
        data = bytearray()
        async for chunk in response.content.iter_chunked(16384):
            data += chunk
            if len(data) > cap:
                raise ToolFailedError(f"the service's answer is larger than {cap} bytes")
        return bytes(data)

    def _result(self, data: bytes, content_type: str) -> str:
        """The part of the answer the LLM sees, as text."""
        if "json" not in content_type and self.spec.result is None:
            return data.decode("utf-8", errors="replace")
        try:
            value = loads_bounded(data, max_bytes=self.spec.max_response_bytes)
        except UntrustedJSONError as exc:
            raise ToolFailedError(f"the service's answer is not usable JSON ({exc})") from None
        for key in (self.spec.result or "").split(".") if self.spec.result else []:
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                raise ToolFailedError(f"the service's answer has no {self.spec.result}")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def _url(self, arguments: Mapping[str, Any]) -> str:
        filled = self._fill(self.spec.url, arguments, lambda text: quote(text, safe=""))
        if urlsplit(filled).netloc != urlsplit(self.spec.url).netloc:  # the spec forbids it
            raise ToolFailedError("the request's host would differ from the agent file's")
        return filled

    def _text(self, template: str, arguments: Mapping[str, Any], *, header: bool = False) -> str:
        text = self._fill(template, arguments, str)
        if header and any(c in text for c in "\r\n"):
            raise ToolFailedError("an argument holds a line break, which a header cannot")
        return text

    def _json(self, template: Any, arguments: Mapping[str, Any]) -> Any:
        """The body: `"{name}"` alone is the argument's own JSON value (dropped when absent)."""
        if isinstance(template, dict):
            return {
                key: self._json(value, arguments)
                for key, value in template.items()
                if not (_whole(value) and _whole(value) not in arguments)
            }
        if isinstance(template, list):
            return [self._json(value, arguments) for value in template]
        if isinstance(template, str):
            name = _whole(template)
            return arguments.get(name) if name else self._text(template, arguments)
        return template

    def _fill(self, template: str, arguments: Mapping[str, Any], encode: Any) -> str:
        """`{name}` from the arguments, `${VAR}` from the environment, each through `encode`."""
        secrets: dict[str, str] = {}

        def secret(match: Any) -> str:
            key = f"__secret_{len(secrets)}"
            secrets[key] = encode(self._env.get(match.group(1), ""))
            return "{" + key + "}"

        values = {
            name: encode("" if value is None else _plain(value))
            for name, value in arguments.items()
        }
        return SECRET.sub(secret, template).format_map(_Blank({**values, **secrets}))


class _RetryableError(ToolFailedError):
    """A timeout, a connection failure or a 5xx: worth another attempt."""


class _Blank(dict[str, str]):
    """An optional parameter the LLM left out fills its placeholder with nothing."""

    def __missing__(self, key: str) -> str:
        return ""


def _whole(value: Any) -> str | None:
    """The parameter a body string is exactly the placeholder of."""
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        name = value[1:-1]
        return name if name.isidentifier() else None
    return None


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
