"""How packsync reaches the APIs: URLs from answers sent as they were given, through the proxy the
environment names, as curl would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ASTRIA_TOKEN, TOKEN, Env, image, write

from packsync.errors import ExitCode, TransientError
from packsync.remote.genviral import GenviralClient
from packsync.remote.transport import RetryPolicy, Transport
from packsync.remote.wire import host_of

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}


class Listener(ThreadingHTTPServer):
    """A server on loopback, in a thread, that notes the request line of everything it is sent."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def listening(handler: type[BaseHTTPRequestHandler]) -> Iterator[Listener]:
    server = Listener(handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _Noted(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Listener

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.seen.append(f"{self.command} {self.path}")
        return parsed


class _Relay(_Noted):
    """A forward HTTP proxy."""

    def _relay(self) -> None:
        target = urlsplit(self.path)  # a proxy is sent the absolute URL
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        try:
            upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""), body, headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP | {"content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay


@pytest.fixture
def proxy() -> Iterator[Listener]:
    with listening(_Relay) as server:
        yield server


@pytest.mark.parametrize("scheme", ["http://", ""], ids=["with its scheme", "named without a scheme, as curl allows"])
def test_requests_go_through_the_proxy_the_environment_names(env: Env, proxy: Listener, scheme: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", scheme + proxy.url.removeprefix("http://"))
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stderr
    assert env.pack(pack_id)["image_count"] == 1
    routes = [line.split("?")[0].replace(env.sandbox.base_url.rstrip("/"), "API") for line in proxy.seen]
    assert f"GET API/packs/{pack_id}" in routes
    assert "POST API/files" in routes and f"POST API/packs/{pack_id}/images" in routes
    assert any(line.startswith("PUT http://127.0.0.1") for line in proxy.seen), "storage too"


def test_no_proxy_sends_those_hosts_direct(env: Env, proxy: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stderr
    assert env.pack(pack_id)["image_count"] == 1
    assert proxy.seen == []


class _Recorder(_Noted):
    """Answers every request with 200 and a few bytes."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_PUT = _answer


def test_urls_from_answers_go_out_as_given_with_spaces_and_letters_encoded() -> None:
    """A presigned URL's escapes and signature byte for byte; a space or an accented letter in an
    image's URL (a file named so in the web app) percent-encoded, as a browser sends it."""
    async def calls(base: str) -> None:
        async with GenviralClient(base, "token") as api:
            await api.put_bytes(f"{base}/up/a%2Fb.png?X-Sig=ab%2Bc%3D&X-Exp=1", b"x", "image/png")
            await api.download(f"{base}/cdn/été 2024.png", 100, hashlib.sha256)

    with listening(_Recorder) as server:
        asyncio.run(calls(server.url))

    assert server.seen == ["PUT /up/a%2Fb.png?X-Sig=ab%2Bc%3D&X-Exp=1", "GET /cdn/%C3%A9t%C3%A9%202024.png"]


@pytest.mark.parametrize("name,proxy", [("ALL_PROXY", "socks5://127.0.0.1:1080"),
                                        ("HTTPS_PROXY", "ftp://user:pw@127.0.0.1:21"),
                                        ("HTTP_PROXY", "http://user:pw@127.0.0.1:31x8")],
                         ids=["a SOCKS proxy", "an FTP proxy", "a proxy URL that is none"])
def test_a_proxy_of_a_kind_packsync_cannot_use_is_one_sentence_naming_no_credentials(
        env: Env, monkeypatch: pytest.MonkeyPatch, name: str, proxy: str) -> None:
    """Only HTTP proxies are spoken to; another kind ends the run at its first request with exit 2 and
    one sentence (never a traceback, never the proxy's password), and nothing goes out around it."""
    for variable in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                     "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(name, proxy)
    write(env.map("brand", pack="p") / "a.png", image())

    result = env.cli("run", "--no-wait")

    assert result.returncode == 2, result.stderr
    assert "proxy" in result.stderr and "Traceback" not in result.stderr
    assert "pw@" not in result.stderr
    assert env.sandbox.calls == {}


class _Refusing(_Noted):
    """A forward proxy that refuses every request with a page showing what it was sent, the credentials it
    refused included (as debugging proxies do)."""

    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        given = self.headers.get("Proxy-Authorization", "").split()
        refused = base64.b64decode(given[-1]).decode() if given else "none"
        body = f"<html><p>credentials {refused} refused</p><pre>{self.headers}</pre></html>".encode()
        self.send_response(407)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse


def test_a_proxy_s_credentials_are_secret_like_the_key(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The password in ``HTTP_PROXY``, as it was given or as the Proxy-Authorization header carries it,
    reaches no output and not the state, even when the proxy's page shows both."""
    password = "pr0xy-S3cret"
    header = base64.b64encode(f"alice:{password}".encode()).decode()
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    with listening(_Refusing) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("://", f"://alice:{password}@"))
        outputs = [env.cli("run", "--no-wait"), env.cli("-v", "run", "--no-wait")]
    outputs += [env.cli("status", "--json", token=None), env.cli("status", token=None)]

    assert proxy.seen, "the requests went to the proxy"
    assert outputs[0].returncode == 1 and "407" in outputs[0].stdout, outputs[0].stdout + outputs[0].stderr
    shown = [password[:6], header[8:16]]  # the password's start, as it is and in the header ("alice:" aside)
    for result in outputs:
        for secret in shown:
            assert secret not in result.stdout + result.stderr
    for path in env.state_path.parent.iterdir():
        for secret in shown:
            assert secret.encode() not in path.read_bytes(), path


#: The variables that name a proxy (a test of one sets its own).
PROXY_VARIABLES = ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                   "all_proxy")


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused, for as long as the test
    holds it (no other program can take it meanwhile). Requests go direct, whatever this machine's proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


def test_a_refused_connection_names_the_api_s_host_and_port(env: Env, refusing: int) -> None:
    env.genviral["base_url"] = f"http://127.0.0.1:{refusing}/api/v1?key=x"
    write(env.map("brand", pack="Brand") / "a.png", image())

    result = env.cli("run", "--no-wait")

    said = result.stdout + result.stderr
    assert result.returncode == ExitCode.SOME_FAILED, said
    assert f"cannot connect to 127.0.0.1:{refusing}: Connection refused" in said
    assert TOKEN not in said and "key=x" not in said and "Traceback" not in said


def test_a_refused_connection_to_astria_names_its_host(env: Env, refusing: int) -> None:
    env.astria["base_url"] = f"http://127.0.0.1:{refusing}"
    env.map_astria(1, pack="unused")

    result = env.cli("astria", "packs")

    said = result.stdout + result.stderr
    assert f"cannot connect to 127.0.0.1:{refusing}: Connection refused" in said, said
    assert ASTRIA_TOKEN not in said and "Traceback" not in said


def test_a_presigned_put_to_a_dead_storage_host_names_the_host_but_not_the_url_s_query(refusing: int) -> None:
    """A presigned URL's query is its credential: the error names where it went, never what it carried."""
    upload_url = f"http://127.0.0.1:{refusing}/storage/0a1b?expires=9&signature=s3cr3t-signature"

    async def put() -> str:
        transport = Transport(retry=RetryPolicy(attempts=1), timeout=5)
        try:
            async with GenviralClient("http://127.0.0.1:1", "token", transport) as api:
                await api.put_bytes(upload_url, b"x", "image/png")
        except TransientError as exc:
            return str(exc)
        finally:
            await transport.aclose()
        raise AssertionError("the PUT to a refusing port did not fail")

    said = asyncio.run(put())

    assert said == f"PUT upload URL: cannot connect to 127.0.0.1:{refusing}: Connection refused"
    assert "s3cr3t" not in said and "storage/" not in said


def test_a_refusing_proxy_is_named_beside_the_host_never_with_its_password(env: Env, refusing: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://user:pr0xy-pw@127.0.0.1:{refusing}")
    write(env.map("brand", pack="Brand") / "a.png", image())

    result = env.cli("run", "--no-wait")

    said = result.stdout + result.stderr
    api = env.sandbox.base_url.removeprefix("http://").split("/")[0]
    assert f"cannot connect to {api} through the proxy 127.0.0.1:{refusing}: Connection refused" in said, said
    assert "pr0xy-pw" not in said and "Traceback" not in said


@pytest.mark.parametrize(("url", "shown"), [
    ("https://api.genviral.io/api/v1/packs/1?key=x#y", "api.genviral.io"),
    ("http://user:password@[::1]:8080/storage/k?signature=s", "[::1]:8080"),
    ("http://Storage.Example:9000", "storage.example:9000"),
    ("http://bad host/x", None),
    ("http://h:99999/x", None),
    (None, None),
])
def test_a_message_shows_a_url_s_host_and_port_only(url: str | None, shown: str | None) -> None:
    assert host_of(url) == shown


def _self_signed(folder: Path) -> tuple[Path, Path] | None:
    """A certificate for 127.0.0.1 signed by its own key (its file and the key's), made with the
    ``cryptography`` package or the ``openssl`` command; None when neither is here."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime

        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
        from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if shutil.which("openssl") is None:
            return None
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


def test_a_certificate_not_trusted_is_said_as_such_not_as_a_system_error(env: Env, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``ssl.SSLError``'s errno is OpenSSL's code (1), which as a system errno reads "Operation not
    permitted": the reason is OpenSSL's own, with where a proxy's certificate authority is named."""
    made = _self_signed(tmp_path)
    if made is None:
        pytest.skip("neither the cryptography package nor the openssl command is here to make a certificate")
    for name in (*PROXY_VARIABLES, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*made)
    with listening(_Noted) as server:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        port = server.server_address[1]
        env.genviral["base_url"] = f"https://127.0.0.1:{port}/api/v1"
        write(env.map("brand", pack="Brand") / "a.png", image())

        result = env.cli("run", "--no-wait")

    said = result.stdout + result.stderr
    assert result.returncode == ExitCode.SOME_FAILED, said
    assert f"cannot connect to 127.0.0.1:{port}: certificate verify failed: self-signed certificate" in said, said
    assert "; behind a proxy that inspects TLS, name its certificate authority in SSL_CERT_FILE" in said
    assert "Operation not permitted" not in said and "Traceback" not in said


def test_a_tls_handshake_with_a_plain_http_server_says_tls_failed_not_a_system_error(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with listening(_Noted) as server:  # (it answers a TLS hello with an HTTP error page)
        port = server.server_address[1]
        env.genviral["base_url"] = f"https://127.0.0.1:{port}/api/v1"
        write(env.map("brand", pack="Brand") / "a.png", image())

        result = env.cli("run", "--no-wait")

    said = result.stdout + result.stderr
    assert f"cannot connect to 127.0.0.1:{port}: TLS failed (" in said, said
    assert "Operation not permitted" not in said and "Traceback" not in said
