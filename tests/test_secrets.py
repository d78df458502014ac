"""Secrets stay secret: no token, key, password or signature in logs (any level), /metrics,
/probe, error messages, or `--check-config` output.

Known secret values go in; everything the exporter says comes out and is searched for them,
together with every credential the stand-in saw on the wire (the IAM tokens it issued and
each request's signature).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from oms_exporter.logs import JsonFormatter, LogfmtFormatter
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Options, Settings, SettingsError, Target, load
from oms_exporter.simulator import Credential, Simulator, make_tasks
from oms_exporter.web import make_app
from tests.conftest import AK, SK, TOKEN, clean_env, launch_exporter, parse_metrics, run_exporter_once, value

TEMP_AK, TEMP_SK, SECURITY_TOKEN = "TEMPAK00000000002", "temp-secret-key-a81f", "security-token-0c44e1"
DOMAIN, USER, PASSWORD = "acme-account", "oms-reader", "iam-password-51c9e2"
BAD_SK, BAD_PASSWORD, BAD_TOKEN = "wrong-secret-key-77aa", "wrong-password-0b9e", "wrong-token-e4d211"
KNOWN_SECRETS = [TOKEN, SK, TEMP_SK, SECURITY_TOKEN, PASSWORD, BAD_SK, BAD_PASSWORD, BAD_TOKEN]

PROJECTS = {name: f"p{n:031d}" for n, name in enumerate(["tok", "keys", "iam", "badkeys", "badiam", "badtoken"], 2)}


class Wire:
    """Every credential the stand-in received: tokens, security tokens, signatures."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        for name in ("X-Auth-Token", "X-Security-Token"):
            if name in request.headers:
                self.seen.add(request.headers[name])
        sig = re.search(r"Signature=([0-9a-f]+)", request.headers.get("Authorization", ""))
        if sig:
            self.seen.add(sig.group(1))
        return await handler(request)


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
async def standin(sim: Simulator, wire: Wire, aiohttp_server: Any) -> TestServer:
    sim.credentials[TEMP_AK] = Credential(TEMP_SK, security_token=SECURITY_TOKEN)
    sim.iam_users[(DOMAIN, USER)] = PASSWORD
    for pid in PROJECTS.values():
        sim.add_project(pid, make_tasks(30, seed=5))
    app = sim.app()
    app.middlewares.append(wire.middleware)
    return await aiohttp_server(app)


def credentials(endpoint: str) -> dict[str, dict[str, str]]:
    """Target name -> its credentials: three that work and three that are refused."""
    iam = {"iam_username": USER, "iam_domain": DOMAIN, "iam_endpoint": endpoint}
    return {
        "tok": {"auth_token": TOKEN},
        "keys": {"ak": TEMP_AK, "sk": TEMP_SK, "security_token": SECURITY_TOKEN},
        "iam": {**iam, "iam_password": PASSWORD},
        "badkeys": {"ak": AK, "sk": BAD_SK},
        "badiam": {**iam, "iam_password": BAD_PASSWORD},
        "badtoken": {"auth_token": BAD_TOKEN},
    }


def secrets_in_play(sim: Simulator, wire: Wire) -> list[str]:
    issued = [t for t in sim.tokens if t != TOKEN]
    assert issued, "the stand-in issued no IAM token"
    assert any(re.fullmatch(r"[0-9a-f]{64}", s) for s in wire.seen), "no signature seen"
    return sorted({*KNOWN_SECRETS, *issued, *wire.seen})


def assert_no_secret(texts: dict[str, str], secrets: list[str]) -> None:
    for where, text in texts.items():
        leaked = sum(s in text for s in secrets)
        if leaked:  # pytest.fail, not assert: the report must not print the secrets either
            pytest.fail(f"{where} contains {leaked} secret(s)", pytrace=False)


def endpoint(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_no_secret_in_logs_metrics_or_errors(
        sim: Simulator, wire: Wire, standin: TestServer, aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    base = endpoint(standin)
    targets = [Target(name=name, project_id=PROJECTS[name], region="cn-north-4", endpoint=base, **creds)
               for name, creds in credentials(base).items()]
    client = await aiohttp_client(make_app(Settings(options=Options(page_limit=10), targets=targets),
                                           stats=SelfMetrics()))
    bodies: dict[str, str] = {}
    for round_ in range(3):
        resp = await client.get("/metrics")
        bodies[f"/metrics #{round_}"] = await resp.text()
        for name in PROJECTS:
            bodies[f"/probe {name} #{round_}"] = await (await client.get(f"/probe?target={name}")).text()
        for token in sim.tokens:  # the IAM token gets revoked: a 401, a renewal, a retry
            if token != TOKEN:
                sim.tokens[token] = 0.0
    bodies["landing page"] = await (await client.get("/")).text()

    samples = parse_metrics(bodies["/metrics #2"])
    up = {name: value(samples, "oms_up", project_id=pid) for name, pid in PROJECTS.items()}
    assert up == {"tok": 1, "keys": 1, "iam": 1, "badkeys": 0, "badiam": 0, "badtoken": 0}
    assert sim.iam_logins >= 3
    assert any("IAM token refused by OMS" in r.getMessage() for r in caplog.records)

    logs: dict[str, str] = {}
    for i, record in enumerate(caplog.records):
        logs[f"log record {i} ({record.name}: {record.getMessage()[:40]})"] = "\n".join(
            [LogfmtFormatter().format(record), JsonFormatter().format(record), repr(vars(record))])
    assert any("authentication failed" in text for text in logs.values())
    assert any("IAM refused the password login" in text for text in logs.values())
    assert_no_secret({**bodies, **logs}, secrets_in_play(sim, wire))


def test_no_secret_in_settings_objects_or_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = "https://oms.cn-north-4.myhuaweicloud.com"
    targets = [Target(name=name, project_id=PROJECTS[name], region="cn-north-4", **creds)
               for name, creds in credentials(base).items()]
    settings = Settings(options=Options(), targets=targets)
    texts = {"repr": repr(settings), "str": str(settings), "json": settings.model_dump_json(),
             "dump": repr(settings.model_dump())}
    for t in targets:
        texts[f"{t.name} fields"] = " ".join(map(str, vars(t).values()))
    # Invalid settings full of secrets: every message is searched.
    config = tmp_path / "oms.yml"
    config.write_text(f"""
targets:
  - {{name: a, project_id: p1, region: cn-north-4, auth_token: {TOKEN}, ak: {AK}, sk: {SK}}}
  - {{name: b, project_id: p2, region: cn-north-4, sk: {TEMP_SK}, security_token: {SECURITY_TOKEN}}}
  - {{name: c, project_id: p3, region: cn-north-4, iam_password: {PASSWORD}, iam_password_file: {tmp_path}/x}}
  - {{name: d, project_id: "bad id", region: cn-north-4, auth_token: {BAD_TOKEN}}}
""")
    monkeypatch.setenv("OMS_PROJECT_ID", "p9")
    monkeypatch.setenv("OMS_REGION", "cn-north-4")
    monkeypatch.setenv("OMS_AUTH_TOKEN", BAD_TOKEN)
    monkeypatch.setenv("OMS_SK", BAD_SK)
    monkeypatch.setenv("OMS_IAM_PASSWORD", BAD_PASSWORD)
    with pytest.raises(SettingsError) as info:
        load({}, config)
    assert len(info.value.lines) == 5
    texts["SettingsError"] = str(info.value)
    # Programmatic construction raises pydantic's own error: its text hides the input too.
    with pytest.raises(ValueError) as direct:
        Target(name="x", project_id="p", region="r", auth_token=TOKEN, ak=AK, sk=SK)
    texts["ValidationError"] = str(direct.value)
    assert_no_secret(texts, KNOWN_SECRETS)


@pytest.mark.slow  # the exporter as a process, twice
async def test_no_secret_in_debug_log_of_a_running_exporter(
        sim: Simulator, wire: Wire, standin: TestServer, tmp_path: Path) -> None:
    """The real program at --log.level debug, secrets from files and environment, good and bad credentials."""
    base = endpoint(standin)
    lines = ["targets:"]
    for name, creds in credentials(base).items():
        if name == "tok":
            continue  # from the environment below
        lines += [f"  - name: {name}", f"    project_id: {PROJECTS[name]}", "    region: cn-north-4",
                  f"    endpoint: {base}"]
        for field, val in creds.items():
            if field in ("ak", "sk", "security_token", "iam_password"):
                secret = tmp_path / f"{name}-{field}"
                secret.write_text(val + "\n")
                lines.append(f"    {field}_file: {secret}")
            else:
                lines.append(f"    {field}: {val}")
    config = tmp_path / "oms.yml"
    config.write_text("\n".join(lines) + "\n")
    env = {"OMS_TARGET_NAME": "tok", "OMS_PROJECT_ID": PROJECTS["tok"], "OMS_REGION": "cn-north-4",
           "OMS_ENDPOINT": base, "OMS_AUTH_TOKEN": TOKEN}
    bodies: dict[str, str] = {}
    for fmt in ("logfmt", "json"):
        args = ["--config.file", str(config), "--log.level", "debug", "--log.format", fmt]
        async with launch_exporter(args, tmp_path, env=clean_env(**env)) as exporter:
            for round_ in range(2):
                status, bodies[f"{fmt} /metrics #{round_}"] = await exporter.get()
                assert status == 200
                _, bodies[f"{fmt} /probe #{round_}"] = await exporter.get("/probe?target=badiam")
        samples = parse_metrics(bodies[f"{fmt} /metrics #1"])
        assert value(samples, "oms_up", project_id=PROJECTS["iam"]) == 1
        assert value(samples, "oms_up", project_id=PROJECTS["badkeys"]) == 0
        bodies[f"{fmt} log"] = exporter.log()
        assert "authentication failed" in bodies[f"{fmt} log"]
        assert "debug" in bodies[f"{fmt} log"]
    assert_no_secret(bodies, secrets_in_play(sim, wire))


@pytest.mark.slow  # the program as a process, three times
def test_no_secret_in_check_config_output(tmp_path: Path) -> None:
    sk_file = tmp_path / "sk"
    sk_file.write_text(SK)
    good = run_exporter_once("--check-config", "--log.level", "debug", env={
        "OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4", "OMS_AK": AK, "OMS_SK_FILE": str(sk_file),
        "OMS_SECURITY_TOKEN": SECURITY_TOKEN})
    assert good.returncode == 0 and "auth aksk" in good.stdout
    bad = run_exporter_once("--check-config", "--log.level", "debug", env={
        "OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4", "OMS_AUTH_TOKEN": TOKEN, "OMS_AK": AK, "OMS_SK": SK,
        "OMS_IAM_PASSWORD": PASSWORD, "CLOUD_SDK_SK": TEMP_SK})
    assert bad.returncode == 2 and "configure one authentication mode" in bad.stderr
    sdk = run_exporter_once("--check-config", env={
        "OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4", "CLOUD_SDK_AK": AK, "CLOUD_SDK_SK": TEMP_SK,
        "CLOUD_SDK_SECURITY_TOKEN": SECURITY_TOKEN})
    assert sdk.returncode == 0
    assert_no_secret({"good stdout": good.stdout, "good stderr": good.stderr, "bad stdout": bad.stdout,
                      "bad stderr": bad.stderr, "sdk stdout": sdk.stdout, "sdk stderr": sdk.stderr}, KNOWN_SECRETS)
