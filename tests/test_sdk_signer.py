"""Our SDK-HMAC-SHA256 signer and the stand-in's verifier, checked against the official Huawei Cloud SDK.

The SDK (`huaweicloudsdkcore`, `huaweicloudsdkoms`) is a test-only dependency: it is the
outside reference. Part one signs the same request with both signers and compares the
`Authorization` header; part two runs the official OMS client against the stand-in.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkoms.v2 import ListTasksRequest, OmsClient
from yarl import URL

from oms_exporter.auth import DATE_FORMAT, AkSkAuth, canonical_query, canonical_uri
from oms_exporter.clock import Clock
from oms_exporter.simulator import Credential
from tests.conftest import AK, PROJECT, SK
from tests.standin import StandIn

NOW = 1_763_000_000.0  # a fixed instant, so both signers put the same X-Sdk-Date in
ODD = "a b+c/é~*"
SECURITY_TOKEN = "temporary-security-token-5f3a9c"


class fixed(Clock):  # noqa: N801 (reads as a function at its call sites)
    """A clock stopped at `now` (Unix time)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def sdk_authorization(url: URL, headers: dict[str, str], security_token: str | None = None,
                      body: bytes = b"", method: str = "GET") -> tuple[str, dict[str, str]]:
    """Sign with the official SDK: the Authorization header and every header it signed."""
    request = SdkRequest(
        method=method, schema=url.scheme, host=url.raw_authority, resource_path=url.path,
        query_params=list(url.query.items()), header_params=dict(headers), body=body)
    credentials = BasicCredentials(AK, SK, PROJECT)
    if security_token is None:
        signed = Signer(credentials).sign(request)
    else:
        # Credentials.sign_request is the SDK's own path for temporary credentials: it adds
        # X-Security-Token, then signs.
        signed = credentials.with_security_token(security_token).sign_request(request)
    return signed.header_params["Authorization"], signed.header_params


def ours(url: URL, security_token: str | None = None, body: bytes = b"", method: str = "GET") -> dict[str, str]:
    return AkSkAuth(AK, SK, PROJECT, security_token, clock=fixed(NOW)).sign(method, url, body)


def same_headers_for_sdk(headers: dict[str, str]) -> dict[str, str]:
    """The headers our signer put in, minus its result and the security token the SDK adds itself."""
    return {k: v for k, v in headers.items() if k not in ("Authorization", "X-Security-Token")}


CASES = {
    "no query": URL(f"https://oms.cn-north-4.myhuaweicloud.com/v2/{PROJECT}/tasks"),
    "query to encode": URL(f"https://oms.cn-north-4.myhuaweicloud.com/v2/{PROJECT}/tasks").with_query(
        [("task_name", ODD), ("limit", "100"), ("offset", "0"), ("group_id", "g/1 2")]),
    "port in host": URL(f"http://127.0.0.1:8443/v2/{PROJECT}/tasks").with_query(limit="10", offset="200"),
}


@pytest.mark.parametrize("security_token", [None, SECURITY_TOKEN], ids=["permanent", "temporary"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_authorization_as_official_signer(case: str, security_token: str | None) -> None:
    url = CASES[case]
    mine = ours(url, security_token)
    assert mine["X-Sdk-Date"] == datetime.fromtimestamp(NOW, UTC).strftime(DATE_FORMAT)
    theirs, signed_headers = sdk_authorization(url, same_headers_for_sdk(mine), security_token)
    assert mine["Authorization"] == theirs
    if security_token is not None:
        assert mine["X-Security-Token"] == signed_headers["X-Security-Token"] == security_token
        assert "x-security-token" in mine["Authorization"].split("SignedHeaders=")[1].split(",")[0]


def test_signed_headers_as_the_sdk_sends_them_for_list_tasks() -> None:
    auth = ours(CASES["no query"])["Authorization"]
    assert auth.startswith(f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
                           "Signature=")


def test_same_authorization_with_a_body() -> None:
    url = URL(f"https://oms.cn-north-4.myhuaweicloud.com/v2/{PROJECT}/tasks")
    body = b'{"name": "x"}'
    mine = ours(url, body=body, method="POST")
    theirs, _ = sdk_authorization(url, same_headers_for_sdk(mine), body=body, method="POST")
    assert mine["Authorization"] == theirs


def test_canonical_pieces_match_the_sdk() -> None:
    url = CASES["query to encode"]
    request = SdkRequest(resource_path="/v2/a b/tasks", query_params=list(url.query.items()), header_params={})
    signer = Signer(BasicCredentials(AK, SK))
    assert canonical_uri("/v2/a%20b/tasks") == signer._process_canonical_uri(request) == "/v2/a%20b/tasks/"
    assert canonical_query(url.query.items()) == Signer.process_canonical_query_string(request)
    assert "task_name=a%20b%2Bc%2F%C3%A9~%2A" in canonical_query(url.query.items())


def test_different_secret_or_date_gives_a_different_signature() -> None:
    url = CASES["no query"]
    base = ours(url)["Authorization"]
    assert AkSkAuth(AK, SK + "x", PROJECT, clock=fixed(NOW)).sign("GET", url)["Authorization"] != base
    assert AkSkAuth(AK, SK, PROJECT, clock=fixed(NOW + 1)).sign("GET", url)["Authorization"] != base
    assert ours(url.with_query(limit="10"))["Authorization"] != base


# --- the official OMS client against the stand-in -------------------------------------------

def sdk_list_tasks(endpoint: str, *, ak: str = AK, sk: str = SK, security_token: str | None = None,
                   tamper: Any = None, **query: Any) -> tuple[int, Any]:
    """Call ListTasks with the official client (blocking): (200, count) or (status, error_code)."""
    config = HttpConfig.get_default_config()
    config.timeout = (5, 5)
    config.retry_times = 0
    credentials = BasicCredentials(ak, sk, PROJECT)
    if security_token is not None:
        credentials = credentials.with_security_token(security_token)
    builder = OmsClient.new_builder().with_http_config(config).with_credentials(credentials) \
        .with_endpoints([endpoint])
    if tamper is not None:
        # Request handlers run after signing, right before the request is sent.
        builder = builder.with_http_handler(HttpHandler().add_request_handler(lambda request, **_: tamper(request)))
    client = builder.build()
    try:
        reply = client.list_tasks(ListTasksRequest(**query))
    except ClientRequestException as exc:
        return exc.status_code, exc.error_code
    finally:
        client._http_client.close()
    return 200, reply.count


def endpoint(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_official_client_is_accepted(sim: StandIn, oms: TestServer) -> None:
    status, count = await asyncio.to_thread(sdk_list_tasks, endpoint(oms), limit=100, offset=0)
    assert (status, count) == (200, 250)
    status, count = await asyncio.to_thread(sdk_list_tasks, endpoint(oms), limit=10, status=5, task_name=ODD)
    assert status == 200
    assert sim.auth_failures == 0
    assert sim.requests[-1][0] == f"/v2/{PROJECT}/tasks"


async def test_official_client_with_temporary_credentials(sim: StandIn, oms: TestServer) -> None:
    sim.credentials["TEMPAK"] = Credential("temp-sk", security_token=SECURITY_TOKEN)
    ok = await asyncio.to_thread(sdk_list_tasks, endpoint(oms), ak="TEMPAK", sk="temp-sk",
                                 security_token=SECURITY_TOKEN, limit=5)
    assert ok == (200, 250)
    # Temporary credentials without (or with another) security token are refused.
    assert await asyncio.to_thread(sdk_list_tasks, endpoint(oms), ak="TEMPAK", sk="temp-sk", limit=5) \
        == (401, "APIGW.0301")
    assert await asyncio.to_thread(sdk_list_tasks, endpoint(oms), ak="TEMPAK", sk="temp-sk",
                                   security_token=SECURITY_TOKEN + "x", limit=5) == (401, "APIGW.0301")


def _flip_signature(request: SdkRequest) -> None:
    auth = request.header_params["Authorization"]
    last = auth[-1]
    request.header_params["Authorization"] = auth[:-1] + ("0" if last != "0" else "1")


def _tamper_query(request: SdkRequest) -> None:
    request.uri = request.uri.replace("limit=10", "limit=11")


def _tamper_date(request: SdkRequest) -> None:
    date = datetime.strptime(request.header_params["X-Sdk-Date"], DATE_FORMAT)
    request.header_params["X-Sdk-Date"] = date.replace(second=(date.second + 1) % 60).strftime(DATE_FORMAT)


def _drop_host_from_signed(request: SdkRequest) -> None:
    auth = request.header_params["Authorization"]
    request.header_params["Authorization"] = auth.replace("content-type;host;", "content-type;")


@pytest.mark.parametrize("tamper", [_flip_signature, _tamper_query, _tamper_date, _drop_host_from_signed],
                         ids=["signature", "query", "date", "signed-headers"])
async def test_tampered_requests_are_refused(sim: StandIn, oms: TestServer, tamper: Any) -> None:
    refused = await asyncio.to_thread(sdk_list_tasks, endpoint(oms), tamper=tamper, limit=10)
    assert refused == (401, "APIGW.0301")
    assert sim.auth_failures == 1


async def test_wrong_secret_key_is_refused(sim: StandIn, oms: TestServer) -> None:
    assert await asyncio.to_thread(sdk_list_tasks, endpoint(oms), sk=SK + "x", limit=10) == (401, "APIGW.0301")
    assert await asyncio.to_thread(sdk_list_tasks, endpoint(oms), ak="UNKNOWNAK", limit=10) == (401, "APIGW.0301")
    assert sim.auth_failures == 2


@pytest.mark.parametrize("skew", [-16 * 60, 16 * 60])
async def test_clock_skew_over_15_minutes_is_refused(sim: StandIn, oms: TestServer, skew: float) -> None:
    sim.clock = lambda: time.time() + skew
    assert await asyncio.to_thread(sdk_list_tasks, endpoint(oms), limit=10) == (401, "APIGW.0301")
    sim.clock = lambda: time.time() + (14 * 60 if skew > 0 else -14 * 60)
    assert await asyncio.to_thread(sdk_list_tasks, endpoint(oms), limit=10) == (200, 250)


async def test_our_signer_is_accepted_with_a_query_to_encode(sim: StandIn, oms: TestServer) -> None:
    """Our signer over aiohttp/yarl (which encode a space as `+`) against the stand-in."""
    sim.credentials["TEMPAK"] = Credential("temp-sk", security_token=SECURITY_TOKEN)
    url = oms.make_url(f"/v2/{PROJECT}/tasks").with_query([("task_name", ODD), ("limit", "3"), ("group_id", "g/1 2")])
    async with aiohttp.ClientSession() as session:
        for auth in (AkSkAuth(AK, SK, PROJECT), AkSkAuth("TEMPAK", "temp-sk", PROJECT, SECURITY_TOKEN)):
            headers = await auth.headers("GET", url, deadline=0.0)  # signing ignores the deadline
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
            tampered = url.update_query(limit="4")
            async with session.get(tampered, headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error_code"] == "APIGW.0301"
