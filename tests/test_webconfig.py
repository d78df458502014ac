"""`--web.config.file`: TLS (minimum version, client certificates) and basic auth, with real
certificates made at test time by trustme, and the file's validation."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import trustme
import yaml
from aiohttp.test_utils import TestServer

from oms_exporter import cli, webconfig
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Options, Settings, SettingsError
from oms_exporter.web import make_app
from tests.conftest import PROJECT, launch_exporter, parse_metrics, target_for, value

PASSWORD = "s3cret-scrape-pw"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server CA with a certificate for 127.0.0.1, a client CA with one client, and an outsider CA."""
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(d / "server.crt"), append=True)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    client_ca.cert_pem.write_to_path(str(d / "clients-ca.crt"))
    server_ca.cert_pem.write_to_path(str(d / "server-ca.crt"))
    return {"dir": d, "server_ca": server_ca, "client": client_ca.issue_cert("prometheus@example.com"),
            "outsider": other_ca.issue_cert("mallory@example.com")}


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def tls_section(pki: dict[str, Any], **extra: Any) -> dict[str, Any]:
    d = pki["dir"]
    return {"cert_file": str(d / "server.crt"), "key_file": str(d / "server.key"), **extra}


def client_ctx(pki: dict[str, Any], *, cert: str | None = None, max_version: ssl.TLSVersion | None = None,
               trust: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if trust:
        pki["server_ca"].configure_trust(ctx)
    if cert is not None:
        pki[cert].configure_cert(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


Serve = Callable[[dict[str, Any]], Awaitable[TestServer]]


@pytest.fixture
def serve(oms: TestServer, tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Serve:
    """`await serve(web_config_doc)` -> the exporter served as cli.main serves it."""

    async def go(doc: dict[str, Any]) -> TestServer:
        config = webconfig.load(write_config(tmp_path / "web.yml", doc))
        app = make_app(Settings(options=Options(), targets=[target_for(oms)]), stats=SelfMetrics())
        webconfig.install(app, config)
        return await aiohttp_server(app, ssl=config.ssl_context)

    return go


async def get(server: TestServer, ctx: ssl.SSLContext | bool | None = None, path: str = "/metrics",
              auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    url = server.make_url(path)
    async with aiohttp.ClientSession() as session:
        headers = {**(headers or {}), **({"Authorization": basic(*auth)} if auth else {})}
        async with session.get(url, ssl=ctx if ctx is not None else True, headers=headers) as resp:
            return resp.status, await resp.text(), resp


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def tls_version(server: TestServer, ctx: ssl.SSLContext) -> str:
    _, writer = await asyncio.open_connection(server.host, server.port, ssl=ctx)
    try:
        return writer.get_extra_info("ssl_object").version()
    finally:
        writer.close()
        await writer.wait_closed()


# --- TLS -----------------------------------------------------------------------------------------

async def test_tls_is_served_with_the_configured_certificate(serve: Serve, pki: dict[str, Any]) -> None:
    server = await serve({"tls_server_config": tls_section(pki)})
    assert str(server.make_url("/")).startswith("https://")
    status, text, _ = await get(server, client_ctx(pki))
    assert status == 200
    assert value(parse_metrics(text), "oms_up", project_id=PROJECT) == 1
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(server, client_ctx(pki, trust=False))
    with pytest.raises(aiohttp.ClientError):  # plain HTTP to a TLS port
        async with aiohttp.ClientSession() as s:
            await s.get(f"http://{server.host}:{server.port}/metrics")


async def test_tls_min_version_is_honoured(serve: Serve, pki: dict[str, Any]) -> None:
    server = await serve({"tls_server_config": tls_section(pki, min_version="TLS13")})
    assert await tls_version(server, client_ctx(pki)) == "TLSv1.3"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await tls_version(server, client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2))


async def test_tls12_is_the_default_minimum_and_is_accepted(serve: Serve, pki: dict[str, Any]) -> None:
    server = await serve({"tls_server_config": tls_section(pki)})
    assert await tls_version(server, client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
    assert await tls_version(server, client_ctx(pki)) == "TLSv1.3"


async def test_max_version_is_honoured(serve: Serve, pki: dict[str, Any]) -> None:
    server = await serve({"tls_server_config": tls_section(pki, max_version="TLS12")})
    assert await tls_version(server, client_ctx(pki)) == "TLSv1.2"


async def test_client_certificates_are_required_and_verified(serve: Serve, pki: dict[str, Any]) -> None:
    ca = str(pki["dir"] / "clients-ca.crt")
    server = await serve({"tls_server_config": tls_section(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=ca)})
    status, _, _ = await get(server, client_ctx(pki, cert="client"))
    assert status == 200
    for cert in (None, "outsider"):  # no certificate, or one the client CA did not sign
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await get(server, client_ctx(pki, cert=cert))


async def test_client_certificates_if_given_are_verified(serve: Serve, pki: dict[str, Any]) -> None:
    ca = str(pki["dir"] / "clients-ca.crt")
    server = await serve({"tls_server_config": tls_section(
        pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file=ca)})
    assert (await get(server, client_ctx(pki)))[0] == 200
    assert (await get(server, client_ctx(pki, cert="client")))[0] == 200
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await get(server, client_ctx(pki, cert="outsider"))


# --- basic auth ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_basic_auth(serve: Serve, pki: dict[str, Any], tls: bool) -> None:
    doc: dict[str, Any] = {"basic_auth_users": {"prometheus": HASH, "grafana": HASH}}
    if tls:
        doc["tls_server_config"] = tls_section(pki)
    server = await serve(doc)
    ctx = client_ctx(pki) if tls else None
    status, text, _ = await get(server, ctx, auth=("prometheus", PASSWORD))
    assert status == 200 and value(parse_metrics(text), "oms_up", project_id=PROJECT) == 1
    for path in ("/metrics", "/probe?target=main", "/healthz", "/"):
        for auth in (None, ("prometheus", "wrong"), ("nobody", PASSWORD), ("prometheus", PASSWORD + "x")):
            status, text, resp = await get(server, ctx, path=path, auth=auth)
            assert status == 401, (path, auth)
            assert resp.headers["WWW-Authenticate"].startswith("Basic ")
            assert "oms_" not in text and PASSWORD not in text


@pytest.mark.parametrize("header", [
    "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
    # beyond bcrypt's 72 bytes:
    pytest.param("Basic " + base64.b64encode(b"prometheus:" + b"x" * 100).decode(), id="long-password"),
    "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Bearer abc",
    pytest.param("Basic " + "A" * 6000, id="huge"),
    "basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode() + "x",
])
async def test_malformed_authorization_is_401_not_500(serve: Serve, header: str) -> None:
    server = await serve({"basic_auth_users": {"prometheus": HASH}})
    status, _, resp = await get(server, headers={"Authorization": header})
    assert status == 401 and "WWW-Authenticate" in resp.headers


async def test_a_scheme_in_any_case_and_a_cached_check(serve: Serve) -> None:
    server = await serve({"basic_auth_users": {"prometheus": HASH}})
    header = "basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    for _ in range(3):
        assert (await get(server, headers={"Authorization": header}))[0] == 200


async def test_htpasswd_2y_hashes_are_accepted(serve: Serve) -> None:
    server = await serve({"basic_auth_users": {"prometheus": "$2y$" + HASH[4:]}})
    assert (await get(server, auth=("prometheus", PASSWORD)))[0] == 200


async def test_basic_auth_without_tls_is_warned_about(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    await serve({"basic_auth_users": {"prometheus": HASH}})
    assert "clear text" in caplog.text


async def test_no_web_config_means_open_http(serve: Serve) -> None:
    server = await serve({})
    assert (await get(server))[0] == 200


# --- validation ----------------------------------------------------------------------------------

BAD_FILES = {
    "unknown key": ({"tls_server_config": {"cert_file": "a", "key_file": "b", "certfile": "c"}},
                    ["tls_server_config.certfile"]),
    "missing key_file": ({"tls_server_config": {"cert_file": "{d}/server.crt"}}, ["tls_server_config.key_file"]),
    "unreadable files": ({"tls_server_config": {"cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key"}},
                         ["tls_server_config.cert_file"]),
    "key does not match": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/clients-ca.crt"}},
                           ["tls_server_config.cert_file"]),
    "bad version": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                                           "min_version": "TLS14"}}, ["tls_server_config.min_version"]),
    "min above max": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                                             "min_version": "TLS13", "max_version": "TLS12"}},
                      ["tls_server_config.min_version"]),
    "bad client auth": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                                               "client_auth_type": "Sometimes"}},
                        ["tls_server_config.client_auth_type"]),
    "unverified client auth": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                                                      "client_auth_type": "RequireAnyClientCert"}},
                               ["tls_server_config.client_auth_type"]),
    "verify without CA": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                                                 "client_auth_type": "RequireAndVerifyClientCert"}},
                          ["tls_server_config.client_ca_file"]),
    "CA without client auth": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                                                      "client_ca_file": "{d}/clients-ca.crt"}},
                               ["tls_server_config.client_auth_type"]),
    "unsupported toolkit keys": ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                                                        "cipher_suites": ["TLS_AES_128_GCM_SHA256"],
                                                        "client_allowed_sans": ["x"]},
                                  "http_server_config": {"headers": {"X-Frame-Options": "deny"}}},
                                 ["tls_server_config.cipher_suites", "tls_server_config.client_allowed_sans",
                                  "http_server_config.headers"]),
    "plain password": ({"basic_auth_users": {"alice": "hunter2-plain", "bob": "$2b$10$short"}},
                       ["basic_auth_users.alice", "basic_auth_users.bob"]),
    "colon in user": ({"basic_auth_users": {"a:b": HASH}}, ["basic_auth_users.a:b"]),
    "users not a map": ({"basic_auth_users": ["alice"]}, ["basic_auth_users"]),
    "not a map": (["tls_server_config"], ["file"]),
}


def _fill(doc: Any, d: Path) -> Any:
    if isinstance(doc, dict):
        return {k: _fill(v, d) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_fill(v, d) for v in doc]
    return doc.replace("{d}", str(d)) if isinstance(doc, str) else doc


@pytest.mark.parametrize("doc,keys", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_give_one_line_per_problem(tmp_path: Path, pki: dict[str, Any], doc: Any,
                                             keys: list[str]) -> None:
    path = write_config(tmp_path / "web.yml", _fill(doc, pki["dir"]))
    with pytest.raises(SettingsError) as err:
        webconfig.load(path)
    lines = err.value.lines
    assert len(lines) == len(keys), lines
    for line, key in zip(lines, keys):
        assert line.startswith(f"{path}: {key}: "), line
    assert "hunter2" not in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"--web.config.file: cannot read"):
        webconfig.load(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("tls_server_config: [\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"line \d+ is not valid YAML"):
        webconfig.load(bad)


def test_cli_exits_2_with_every_problem_of_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("OMS_", "CLOUD_SDK_")):
            monkeypatch.delenv(k)
    web = write_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": "/nope"},
                                              "basic_auth_users": {"alice": "plain"}})
    targets = write_config(tmp_path / "targets.yml", {"targets": [{"name": "x"}]})
    code = cli.main(["--config.file", str(targets), "--web.config.file", str(web), "--check-config"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert all(line.startswith("oms-exporter: error: ") for line in err)
    assert any("targets[0]" in line for line in err)
    assert any("tls_server_config.key_file" in line for line in err)
    assert any("basic_auth_users.alice" in line for line in err)


def test_cli_accepts_a_good_file(tmp_path: Path, pki: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("OMS_", "CLOUD_SDK_")):
            monkeypatch.delenv(k)
    web = write_config(tmp_path / "web.yml", {"tls_server_config": tls_section(pki),
                                              "basic_auth_users": {"prometheus": HASH}})
    targets = write_config(tmp_path / "targets.yml", {"targets": [
        {"name": "x", "project_id": "p1", "region": "cn-north-4", "auth_token": "t"}]})
    assert cli.main(["--config.file", str(targets), "--web.config.file", str(web), "--check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().out


# --- the real program ----------------------------------------------------------------------------

@pytest.mark.slow  # the exporter as a process
async def test_the_exporter_serves_tls_and_basic_auth_end_to_end(tmp_path: Path, pki: dict[str, Any]) -> None:
    """`oms-exporter --demo --web.config.file ...` as a user runs it: the flag reaches the server."""
    ca = str(pki["dir"] / "clients-ca.crt")
    web = write_config(tmp_path / "web.yml", {
        "tls_server_config": tls_section(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=ca,
                                         min_version="TLS12"),
        "basic_auth_users": {"prometheus": HASH}})
    ok = client_ctx(pki, cert="client")
    args = ["--demo", "--demo.tasks", "20", "--web.config.file", str(web)]
    async with launch_exporter(args, tmp_path, ssl_context=ok, ready=lambda status, body: True) as exporter, \
            aiohttp.ClientSession() as session:
        url = f"{exporter.base}/metrics"
        async with session.get(url, ssl=ok) as resp:
            assert resp.status == 401
        async with session.get(url, ssl=ok, headers={"Authorization": basic("prometheus", PASSWORD)}) as resp:
            assert resp.status == 200
            assert value(parse_metrics(await resp.text()), "oms_up",
                         project_id="0a1b2c3d4e5f60718293a4b5c6d7e8f9") == 1
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            auth = {"Authorization": basic("prometheus", PASSWORD)}
            async with session.get(url, ssl=client_ctx(pki), headers=auth):
                pass
    log = exporter.log()
    assert "tls=True" in log and "basic_auth_users=1" in log
    assert PASSWORD not in log and "Traceback" not in log


async def test_wrong_passwords_cannot_delay_a_scraper_that_proved_its_own(
        serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 concurrent wrong passwords (each a bcrypt check at a realistic cost) and a scraper that
    authenticated before: the scraper is answered at once, not behind the checks."""
    # A small cache, so that these 60 wrong passwords would push the right one out of a shared one.
    monkeypatch.setattr(webconfig.BasicAuth, "CACHE_SIZE", 16)
    monkeypatch.setattr(webconfig.BasicAuth, "FAILED_CACHE_SIZE", 16, raising=False)
    cost10 = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    started = time.monotonic()
    assert bcrypt.checkpw(PASSWORD.encode(), cost10.encode())
    check = time.monotonic() - started  # one bcrypt check on this machine
    server = await serve({"basic_auth_users": {"prometheus": cost10}})
    assert (await get(server, path="/healthz", auth=("prometheus", PASSWORD)))[0] == 200

    flood = [asyncio.create_task(get(server, path="/healthz", auth=("prometheus", f"guess-{i}")))
             for i in range(60)]
    while sum(t.done() for t in flood) < 20:  # more wrong passwords answered than the cache holds
        await asyncio.sleep(0.01)
    started = time.monotonic()
    status, _, _ = await get(server, path="/healthz", auth=("prometheus", PASSWORD))
    took = time.monotonic() - started
    pending = sum(not t.done() for t in flood)
    statuses = [s for s, _, _ in await asyncio.gather(*flood)]
    assert status == 200
    assert took < max(3 * check, 0.2), (took, check)
    assert pending or all(s == 429 for s in statuses[-10:])  # answered before the flood was
    # Beyond the checks running and the few waiting, the flood is refused at once, never let in.
    assert set(statuses) == {401, 429} and statuses.count(401) <= 2 + webconfig.BasicAuth.MAX_WAITING


async def test_a_reloaded_web_config_is_served_from_the_next_request(
        serve: Serve, pki: dict[str, Any], tmp_path: Path) -> None:
    server = await serve({"basic_auth_users": {"prometheus": HASH}})
    app = server.app
    assert app is not None
    other = bcrypt.hashpw(b"new-password", bcrypt.gensalt(rounds=4)).decode()
    new = webconfig.load(write_config(tmp_path / "new.yml", {"basic_auth_users": {"grafana": other}}))
    assert webconfig.reload_errors(app, new) == []
    webconfig.swap(app, new)
    assert (await get(server, path="/healthz", auth=("prometheus", PASSWORD)))[0] == 401
    assert (await get(server, path="/healthz", auth=("grafana", "new-password")))[0] == 200
    webconfig.swap(app, webconfig.load(write_config(tmp_path / "none.yml", {})))
    assert (await get(server, path="/healthz"))[0] == 200
    tls = webconfig.load(write_config(tmp_path / "tls.yml", {"tls_server_config": tls_section(pki)}))
    assert webconfig.reload_errors(app, tls) == [f"{webconfig.FLAG}: tls_server_config: turning TLS on or off "
                                                 "takes a restart"]
