"""Authentication settings: exactly one mode per target, secrets from files, the SDK's variables,
and `--check-config` printing one line per problem with exit code 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from oms_exporter.settings import SECRET_FIELDS, SettingsError, Target, load
from tests.conftest import run_exporter_once

BASE = {"name": "t", "project_id": "p1", "region": "cn-north-4"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OMS_* or CLOUD_SDK_* variable of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.upper().startswith(("OMS_", "CLOUD_SDK_")):
            monkeypatch.delenv(name)


def target_error(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        Target(**{**BASE, **fields})
    return "\n".join(e["msg"] for e in info.value.errors())


def env_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for k, v in {"OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4", **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as info:
        load({}, None)
    return info.value.lines


def env_target(monkeypatch: pytest.MonkeyPatch, **env: str) -> Target:
    for k, v in {"OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4", **env}.items():
        monkeypatch.setenv(k, v)
    (target,) = load({}, None).targets
    return target


# --- one mode per target -------------------------------------------------------------------

@pytest.mark.parametrize("fields, named", [
    ({"auth_token": "t", "ak": "a", "sk": "s"}, "token (auth_token) and aksk (ak, sk)"),
    ({"auth_token": "t", "iam_username": "u"}, "token (auth_token) and iam (iam_username)"),
    ({"ak": "a", "iam_password": "p", "iam_domain": "d"}, "aksk (ak) and iam (iam_password, iam_domain)"),
    ({"auth_token": "t", "sk": "s", "iam_domain": "d"}, "token (auth_token) and aksk (sk) and iam (iam_domain)"),
])
def test_two_modes_is_an_error_naming_both(fields: dict[str, str], named: str) -> None:
    assert target_error(**fields) == f"Value error, configure one authentication mode, not {named}"


@pytest.mark.parametrize("fields, missing", [
    ({"ak": "a"}, "aksk authentication also needs sk"),
    ({"sk": "s"}, "aksk authentication also needs ak"),
    ({"ak": "a", "security_token": "st"}, "aksk authentication also needs sk"),
    ({"iam_username": "u", "iam_password": "p"}, "iam authentication also needs iam_domain"),
    ({"iam_domain": "d"}, "iam authentication also needs iam_username, iam_password"),
])
def test_missing_half_of_a_pair(fields: dict[str, str], missing: str) -> None:
    assert target_error(**fields) == f"Value error, {missing}"


def test_no_credentials_and_stray_security_token() -> None:
    assert "no credentials: set auth_token, ak + sk, or iam_username + iam_password + iam_domain" in target_error()
    assert "security_token goes with ak + sk" in target_error(auth_token="t", security_token="st")


def test_each_mode_and_secrets_held_as_secretstr() -> None:
    token = Target(**BASE, auth_token="tok")
    aksk = Target(**BASE, ak="a", sk="s", security_token="st")
    iam = Target(**BASE, iam_username="u", iam_password="pw", iam_domain="d")
    assert (token.auth_mode, aksk.auth_mode, iam.auth_mode) == ("token", "aksk", "iam")
    for t in (token, aksk, iam):
        for field in SECRET_FIELDS:
            assert getattr(t, field) is None or isinstance(getattr(t, field), SecretStr)
    assert isinstance(aksk.ak, SecretStr) and aksk.sk.get_secret_value() == "s"  # type: ignore[union-attr]
    assert iam.iam_url == "https://iam.cn-north-4.myhuaweicloud.com"
    assert Target(**BASE, auth_token="t", iam_endpoint="https://iam.myhuaweicloud.com/").iam_url \
        == "https://iam.myhuaweicloud.com"


# --- secrets from files ----------------------------------------------------------------------

def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("field", SECRET_FIELDS)
def test_secret_read_from_file(field: str, tmp_path: Path) -> None:
    others = {"auth_token": {}, "ak": {"sk": "s"}, "sk": {"ak": "a"}, "security_token": {"ak": "a", "sk": "s"},
              "iam_password": {"iam_username": "u", "iam_domain": "d"}}[field]
    # Kubernetes and Docker secrets usually end with a newline.
    t = Target(**BASE, **others, **{f"{field}_file": write(tmp_path / "secret", "from-file\n")})
    assert getattr(t, field).get_secret_value() == "from-file"


def test_secret_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert target_error(auth_token_file=str(missing)) == \
        f"Value error, auth_token_file: cannot read {missing}: No such file or directory"
    assert target_error(auth_token_file=str(tmp_path)) == \
        f"Value error, auth_token_file: cannot read {tmp_path}: Is a directory"
    empty = write(tmp_path / "empty", "\n")
    assert target_error(ak="a", sk_file=empty) == f"Value error, sk_file: {empty} is empty"
    both = write(tmp_path / "both", "x")
    assert target_error(iam_username="u", iam_domain="d", iam_password="p", iam_password_file=both) == \
        "Value error, set iam_password or iam_password_file, not both"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    write(path, "x")
    path.chmod(0)
    assert target_error(auth_token_file=str(path)) == \
        f"Value error, auth_token_file: cannot read {path}: Permission denied"


def test_yaml_with_secret_files(tmp_path: Path) -> None:
    config = tmp_path / "oms.yml"
    config.write_text(f"""
targets:
  - name: keys
    project_id: p1
    region: cn-north-4
    ak_file: {write(tmp_path / "ak", "AKFROMFILE")}
    sk_file: {write(tmp_path / "sk", "sk-from-file")}
    security_token_file: {write(tmp_path / "st", "st-from-file")}
  - name: iam
    project_id: p2
    region: cn-east-3
    iam_username: reader
    iam_domain: acme
    iam_password_file: {write(tmp_path / "pw", "pw-from-file")}
  - name: token
    project_id: p3
    region: cn-south-1
    auth_token_file: {write(tmp_path / "tok", "token-from-file")}
""")
    keys, iam, token = load({}, config).targets
    assert (keys.ak.get_secret_value(), keys.sk.get_secret_value(),  # type: ignore[union-attr]
            keys.security_token.get_secret_value()) == ("AKFROMFILE", "sk-from-file", "st-from-file")  # type: ignore[union-attr]
    assert iam.iam_password.get_secret_value() == "pw-from-file"  # type: ignore[union-attr]
    assert token.auth_token.get_secret_value() == "token-from-file"  # type: ignore[union-attr]


def test_env_secret_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    t = env_target(monkeypatch, OMS_AK_FILE=write(tmp_path / "ak", "AK1\n"), OMS_SK_FILE=write(tmp_path / "sk", "SK1"))
    assert (t.auth_mode, t.ak.get_secret_value(), t.sk.get_secret_value()) == ("aksk", "AK1", "SK1")  # type: ignore[union-attr]
    assert env_error(monkeypatch, OMS_AK_FILE=str(tmp_path / "nope")) == [
        f"OMS_* environment: ak_file: cannot read {tmp_path / 'nope'}: No such file or directory"]


# --- environment: OMS_* and the SDK's CLOUD_SDK_AK / CLOUD_SDK_SK ------------------------------

def test_env_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    t = env_target(monkeypatch, OMS_IAM_USERNAME="u", OMS_IAM_PASSWORD="pw", OMS_IAM_DOMAIN="d",
                   OMS_IAM_ENDPOINT="https://iam.myhuaweicloud.com")
    assert (t.auth_mode, t.iam_username, t.iam_domain, t.iam_url) == ("iam", "u", "d", "https://iam.myhuaweicloud.com")
    assert isinstance(t.iam_password, SecretStr)


def test_cloud_sdk_variables_are_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    t = env_target(monkeypatch, CLOUD_SDK_AK="SDKAK", CLOUD_SDK_SK="sdk-sk")
    assert (t.auth_mode, t.ak.get_secret_value(), t.sk.get_secret_value()) == ("aksk", "SDKAK", "sdk-sk")  # type: ignore[union-attr]
    assert t.security_token is None


def test_temporary_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    t = env_target(monkeypatch, OMS_AK="A", OMS_SK="S", OMS_SECURITY_TOKEN="st")
    assert t.security_token.get_secret_value() == "st"  # type: ignore[union-attr]


def test_cloud_sdk_pair_with_oms_security_token(monkeypatch: pytest.MonkeyPatch) -> None:
    t = env_target(monkeypatch, CLOUD_SDK_AK="SDKAK", CLOUD_SDK_SK="sdk-sk", OMS_SECURITY_TOKEN="st")
    assert (t.ak.get_secret_value(), t.security_token.get_secret_value()) == ("SDKAK", "st")  # type: ignore[union-attr]


@pytest.mark.parametrize("env, mode, ak", [
    ({"OMS_AK": "OMSAK", "OMS_SK": "oms-sk"}, "aksk", "OMSAK"),
    ({"OMS_AUTH_TOKEN": "tok"}, "token", None),
    ({"OMS_IAM_USERNAME": "u", "OMS_IAM_PASSWORD": "p", "OMS_IAM_DOMAIN": "d"}, "iam", None),
], ids=["oms-pair", "token", "iam"])
def test_oms_credentials_win_over_cloud_sdk_variables(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                      mode: str, ak: str | None) -> None:
    """CLOUD_SDK_* are often set for other tools: they never clash with an OMS_* mode."""
    t = env_target(monkeypatch, CLOUD_SDK_AK="SDKAK", CLOUD_SDK_SK="sdk-sk", CLOUD_SDK_SECURITY_TOKEN="sdk-st", **env)
    assert t.auth_mode == mode
    assert (t.ak.get_secret_value() if t.ak else None) == ak
    assert t.security_token is None


def test_oms_secret_file_wins_over_cloud_sdk_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    t = env_target(monkeypatch, CLOUD_SDK_AK="SDKAK", CLOUD_SDK_SK="sdk-sk",
                   OMS_AK="OMSAK", OMS_SK_FILE=write(tmp_path / "sk", "file-sk"))
    assert (t.ak.get_secret_value(), t.sk.get_secret_value()) == ("OMSAK", "file-sk")  # type: ignore[union-attr]


def test_cloud_sdk_variables_alone_define_no_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_SDK_AK", "SDKAK")
    monkeypatch.setenv("CLOUD_SDK_SK", "sdk-sk")
    with pytest.raises(SettingsError) as info:
        load({}, None)
    assert info.value.lines == ["no project configured: set OMS_PROJECT_ID, OMS_REGION and credentials, or "
                                "credentials alone (OMS_AK and OMS_SK) to discover every project, or give "
                                "--config.file (CLOUD_SDK_AK/CLOUD_SDK_SK alone start nothing: they are often "
                                "set for other tools)"]


def test_env_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_error(monkeypatch, OMS_AUTH_TOKEN="t", OMS_AK="a", OMS_SK="s") == [
        "OMS_* environment: configure one authentication mode, not token (auth_token) and aksk (ak, sk)"]
    monkeypatch.delenv("OMS_AUTH_TOKEN")
    monkeypatch.delenv("OMS_SK")
    assert env_error(monkeypatch) == ["OMS_* environment: aksk authentication also needs sk"]


# --- the command line: one line per problem, exit code 2 ----------------------------------------

def run_check_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_exporter_once("--check-config", *args, env=env)


@pytest.mark.slow  # the program as a process
def test_check_config_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "oms.yml"
    config.write_text("""
targets:
  - {name: both, project_id: p1, region: cn-north-4, auth_token: t, ak: a, sk: s}
  - {name: half, project_id: p2, region: cn-north-4, ak: a}
  - {name: file, project_id: p3, region: cn-north-4, auth_token_file: /nonexistent/token}
""")
    res = run_check_config({"OMS_PROJECT_ID": "p4", "OMS_REGION": "cn-north-4", "OMS_IAM_USERNAME": "u",
                            "OMS_IAM_PASSWORD": "p"}, "--config.file", str(config), "--oms.page-limit", "0")
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "oms-exporter: error: --oms.page-limit: Input should be greater than or equal to 1",
        f"oms-exporter: error: {config}: targets[0]: configure one authentication mode, "
        "not token (auth_token) and aksk (ak, sk)",
        f"oms-exporter: error: {config}: targets[1]: aksk authentication also needs sk",
        f"oms-exporter: error: {config}: targets[2]: auth_token_file: cannot read /nonexistent/token: "
        "No such file or directory",
        "oms-exporter: error: OMS_* environment: iam authentication also needs iam_domain",
    ]


@pytest.mark.slow  # the program as a process
def test_check_config_ok_names_the_mode() -> None:
    res = run_check_config({"OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4",
                            "CLOUD_SDK_AK": "SDKAK", "CLOUD_SDK_SK": "sdk-sk"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == (
        "target default: project p1 in cn-north-4, endpoint https://oms.cn-north-4.myhuaweicloud.com, auth aksk, "
        "collectors tasks, task_groups, sync_tasks")
