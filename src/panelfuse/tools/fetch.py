"""web_fetch: one page over HTTP(S), guarded against SSRF, cut to a token budget.

The guard: the host is resolved (numeric hosts parsed as leniently as inet_aton does, so `2130706433`,
`0177.0.0.1`, `0x7f.1` and `[::ffff:127.0.0.1]` are all seen as 127.0.0.1) and every address is checked
with `ipaddress`; loopback, private, link-local, multicast, reserved, unspecified and cloud-metadata
addresses are refused unless an allowlist entry (host name or CIDR) covers them. The connection is
pinned to the checked address (URL host = the IP, Host header and TLS SNI = the name), so a DNS answer
that changes between check and connect cannot send it elsewhere. Redirects are followed by hand, each
hop checked the same way. Every failure is a value (FetchResult.error), never an exception.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from panelfuse.tools.extract import html_to_text

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown", "application/json")
HTML_TYPES = ("text/html", "application/xhtml+xml")
_HOST_NAME = re.compile(r"[\w.-]+")  # letters (IDN too), digits, dots, hyphens: nothing a resolver would mangle
_NUMERIC_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


# ---- the guard's pure functions -----------------------------------------------------------------


def parse_numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host denotes, with inet_aton's leniency for IPv4 (1 to 4 parts, each
    decimal, octal with a leading 0, or hex with 0x; the last part fills the remaining bytes).
    None for a host name. Pure."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if not host:
        return None
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    parts = host.split(".")
    if len(parts) > 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    try:
        values = [
            int(p, 16) if p.startswith("0x") else int(p, 8) if len(p) > 1 and p[0] == "0" else int(p) for p in parts
        ]
    except ValueError:  # "0x" alone, or an 8 or 9 in an octal part: inet_aton refuses these too
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    return ipaddress.IPv4Address(number * 256 ** (4 - len(head)) + last)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64, 6to4 or Teredo IPv6 address. Pure."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a fetch may not connect to `ip`, or None when it may. Pure."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = blocked_reason(inner)
        return f"{reason} (inside {ip})" if reason else None
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    for test, what in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
    ):
        if test:
            return f"{ip} is a {what} address"
    if not ip.is_global:  # shared address space (100.64/10), documentation ranges, ...
        return f"{ip} is not a public address"
    return None


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks exempt from the address checks (tests, self-hosted services)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Allowlist:
        hosts, networks = set(), []
        for entry in entries:
            e = entry.strip()
            try:
                networks.append(ipaddress.ip_network(e.strip("[]"), strict=False))
            except ValueError:
                hosts.add(e.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, ip: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        inner = embedded_ipv4(ip)
        return any(
            addr in net
            for net in self.networks
            for addr in (ip, inner)
            if addr is not None and addr.version == net.version
        )


def check_address(host: str, ip: IPAddress, allow: Allowlist) -> str | None:
    return None if allow.allows(host, ip) else blocked_reason(ip)


# ---- fetching -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_bytes: int = 2_000_000  # of the (decoded) body; the rest is not read
    max_redirects: int = 3
    max_tokens: int = 2000  # the text is cut to max_tokens × 4 characters
    user_agent: str = "panelfuse-web-fetch/0.1"


@dataclass
class FetchResult:
    url: str
    final_url: str = ""
    ok: bool = False
    status: int | None = None
    content_type: str = ""
    title: str = ""
    text: str = ""
    error: str | None = None
    truncated: bool = False  # the byte cap or the token budget cut the page
    redirects: int = 0
    hops: list[str] = field(default_factory=list)


class FetchRefused(Exception):
    """Internal: a check failed; becomes FetchResult.error."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _content_type(header: str) -> tuple[str, str | None]:
    mime, _, params = header.partition(";")
    m = re.search(r"charset\s*=\s*\"?([\w.:-]+)", params, re.IGNORECASE)
    return mime.strip().lower(), (m.group(1) if m else None)


class Fetcher:
    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        allow: Sequence[str] = (),
        resolver: Resolver | None = None,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self.policy = policy or FetchPolicy()
        self.allow = Allowlist.parse(allow)
        self.resolver = resolver or system_resolver
        # A fresh client per fetch: the connection is pinned to an IP with a name's SNI, and a shared
        # pool would reuse that TLS connection for another name on the same IP.
        self.client_factory = client_factory or (lambda: httpx.AsyncClient(trust_env=False, follow_redirects=False))

    async def check_url(self, url: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """(the URL to request, pinned to a checked IP; headers; httpx extensions) or FetchRefused."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetchRefused(f"not a valid URL ({exc})") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchRefused(f"only http and https URLs can be fetched, not '{scheme or 'none'}'")
        if parts.username is not None or parts.password is not None:
            raise FetchRefused("URLs with credentials are refused")
        host = parts.hostname or ""
        if not host:
            raise FetchRefused("the URL has no host")
        port = port or (443 if scheme == "https" else 80)
        numeric = parse_numeric_host(host)
        if numeric is None and not _HOST_NAME.fullmatch(host):
            raise FetchRefused(f"'{host}' is not a valid host name")
        if numeric is not None:
            addresses: list[IPAddress] = [numeric]
        else:
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await self.resolver(host, port)]
            except (OSError, ValueError, UnicodeError) as exc:
                raise FetchRefused(f"cannot resolve {host}: {exc}") from exc
            if not addresses:
                raise FetchRefused(f"{host} has no address")
        for ip in addresses:  # every address: a name with one private address among public ones is refused
            reason = check_address(host, ip, self.allow)
            if reason:
                raise FetchRefused(f"refused: {host} resolves to a non-public address ({reason})")
        ip = addresses[0]
        hostpart = f"[{ip}]" if ip.version == 6 else str(ip)
        target = httpx.URL(
            f"{scheme}://{hostpart}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        )
        headers = {
            "Host": parts.netloc,
            "User-Agent": self.policy.user_agent,
            "Accept": "text/html, application/xhtml+xml, text/plain, text/markdown, application/json",
        }
        extensions = {"sni_hostname": host} if scheme == "https" and numeric is None else {}
        return target, headers, extensions

    async def fetch(self, url: str) -> FetchResult:
        result = FetchResult(url=url)
        try:
            await self._fetch(url, result)
        except FetchRefused as exc:
            result.error = str(exc)
        except httpx.TimeoutException:
            result.error = "timed out"
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        result.ok = result.error is None
        return result

    async def _fetch(self, url: str, result: FetchResult) -> None:
        p = self.policy
        timeout = httpx.Timeout(p.read_timeout, connect=p.connect_timeout)
        current = url
        async with self.client_factory() as client:
            for hop in range(p.max_redirects + 1):
                result.hops.append(current)
                target, headers, extensions = await self.check_url(current)
                req = client.build_request("GET", target, headers=headers, extensions=extensions, timeout=timeout)
                resp = await client.send(req, stream=True)
                try:
                    if resp.is_redirect:
                        location = resp.headers.get("location")
                        if not location:
                            raise FetchRefused(f"HTTP {resp.status_code} redirect without a Location")
                        if hop == p.max_redirects:
                            raise FetchRefused(f"too many redirects (more than {p.max_redirects})")
                        current = urljoin(current, location)
                        result.redirects += 1
                        continue
                    result.final_url, result.status = current, resp.status_code
                    await self._read(resp, result)
                    return
                finally:
                    await resp.aclose()

    async def _read(self, resp: httpx.Response, result: FetchResult) -> None:
        p = self.policy
        if resp.status_code >= 400:
            raise FetchRefused(f"HTTP {resp.status_code}")
        mime, charset = _content_type(resp.headers.get("content-type", ""))
        result.content_type = mime
        if mime not in TEXT_TYPES:
            raise FetchRefused(f"content type '{mime or 'none'}' is not text (accepted: {', '.join(TEXT_TYPES)})")
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) >= p.max_bytes:
                del body[p.max_bytes :]
                result.truncated = True
                break
        try:
            text = body.decode(charset or "utf-8", errors="replace")
        except LookupError:  # an unknown charset name
            text = body.decode("utf-8", errors="replace")
        if mime in HTML_TYPES:
            result.title, text = await asyncio.to_thread(html_to_text, text, result.final_url)
        budget = p.max_tokens * 4
        if len(text) > budget:
            text, result.truncated = text[:budget], True
        result.text = text
