"""Every bad setting: one clear line naming it, exit code 2, before anything listens."""

import os
import textwrap

import pytest

from oms_exporter.settings import SettingsError, load, parse_duration
from tests.conftest import check_config_error, free_port, run_exporter_once, run_main

GOOD_ENV = {"OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4", "OMS_AUTH_TOKEN": "tok"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("OMS_", "CLOUD_SDK_")):
            monkeypatch.delenv(k)


run = run_main


def test_env_project_defaults(monkeypatch, capsys):
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    code, out, err = run(["--check-config"], capsys)
    assert code == 0, err
    assert "project p1 in cn-north-4, endpoint https://oms.cn-north-4.myhuaweicloud.com, auth token" in out


def test_yaml_targets(tmp_path, capsys):
    f = tmp_path / "c.yml"
    token_file = tmp_path / "tok"
    token_file.write_text("secret-from-file\n")
    f.write_text(textwrap.dedent(f"""
        targets:
          - name: prod
            project_id: aaa
            region: cn-east-3
            auth_token_file: {token_file}
          - name: dev
            project_id: bbb
            region: ap-southeast-1
            endpoint: http://127.0.0.1:9999/
            auth_token: t
            statuses: [2, 4]
    """))
    settings = load({}, f)
    assert [t.name for t in settings.targets] == ["prod", "dev"]
    assert settings.targets[0].auth_token.get_secret_value() == "secret-from-file"
    assert settings.targets[1].oms_endpoint == "http://127.0.0.1:9999"
    code, out, _ = run(["--config.file", str(f), "--check-config"], capsys)
    assert code == 0 and "target dev: project bbb in ap-southeast-1" in out


@pytest.mark.parametrize("argv, env, yaml_text, expected", [
    ([], {}, None, "no project configured"),
    ([], {**GOOD_ENV, "OMS_REGION": ""}, None, "OMS_REGION:"),
    ([], {**GOOD_ENV, "OMS_ENDPOINT": "ftp://x"}, None, "OMS_ENDPOINT: 'ftp://x' is not an http(s) URL"),
    ([], {**GOOD_ENV, "OMS_ENDPOINT": "not a url"}, None, "OMS_ENDPOINT:"),
    ([], {**GOOD_ENV, "OMS_PROJECT_ID": "a/b"}, None, "OMS_PROJECT_ID:"),
    ([], {"OMS_PROJECT_ID": "p", "OMS_REGION": "cn-north-4"}, None, "no credentials"),
    (["--oms.page-limit", "200"], GOOD_ENV, None, "--oms.page-limit: Input should be less than or equal to 100"),
    (["--oms.page-limit", "0"], GOOD_ENV, None, "--oms.page-limit:"),
    (["--oms.max-concurrency", "many"], GOOD_ENV, None, "--oms.max-concurrency:"),
    (["--web.listen-address", "10066"], GOOD_ENV, None, "--web.listen-address:"),
    (["--web.telemetry-path", "metrics"], GOOD_ENV, None, "--web.telemetry-path:"),
    (["--log.level", "loud"], GOOD_ENV, None, "--log.level:"),
    (["--log.format", "xml"], GOOD_ENV, None, "--log.format:"),
    (["--oms.finished-task-max-age", "7 days"], GOOD_ENV, None, "--oms.finished-task-max-age:"),
    (["--oms.scrape-timeout", "0s"], GOOD_ENV, None, "--oms.scrape-timeout:"),
    (["--oms.ca-file", "/nonexistent/ca.pem"], GOOD_ENV, None, "--oms.ca-file:"),
    (["--no-such-flag"], GOOD_ENV, None, "unrecognized arguments: --no-such-flag"),
    (["--oms.min-interval", "inf"], GOOD_ENV, None, "--oms.min-interval: Input should be a finite number"),
    (["--oms.timeout-offset", "20s"], GOOD_ENV, None, "--oms.timeout-offset (20s) must be smaller than"),
    (["--web.telemetry-path", "/probe"], GOOD_ENV, None, "--web.telemetry-path: /probe is the path of another"),
    ([], {**GOOD_ENV, "OMS_TARGET_NAME": "a b"}, None, "OMS_TARGET_NAME:"),
    ([], {**GOOD_ENV, "OMS_ENDPOINT": "https://u:pw@oms.example.com"}, None,
     "OMS_ENDPOINT: should not carry a user or password"),
    ([], {}, "targets:\n  - name: a\n    project_id: p\n    region: cn-north-4\n    auth_token: t\n    colour: red\n",
     "targets[0].colour: Extra inputs are not permitted"),
    ([], {}, "targets:\n  - {name: a, project_id: p, region: cn-north-4, auth_token: t}\nlisten: 1\n",
     "listen: Extra inputs are not permitted"),
    ([], {}, "targets: [\n", "is not valid YAML"),
    ([], {}, "targets: []\n", "give `targets:`, `discovery:`, or both"),
    ([], {}, "targets:\n  - {name: a, project_id: p, region: cn-north-4, auth_token: t}\n"
             "  - {name: a, project_id: q, region: cn-north-4, auth_token: t}\n", "used twice"),
    ([], {}, "targets:\n  - {name: a, project_id: p, region: cn-north-4, auth_token: t, statuses: [9]}\n",
     "targets[0].statuses[0]: Input should be less than or equal to 7"),
    ([], {}, "targets:\n  - {name: a, project_id: p, region: cn-north-4, auth_token_file: /nonexistent}\n",
     "cannot read /nonexistent"),
])
def test_bad_settings_one_line_exit_2(argv, env, yaml_text, expected, monkeypatch, tmp_path, capsys):
    line = check_config_error(argv, env, yaml_text, monkeypatch, tmp_path, capsys)
    assert expected in line, line


def test_several_bad_settings_one_line_each(monkeypatch, capsys):
    for k, v in {**GOOD_ENV, "OMS_ENDPOINT": "ftp://x"}.items():
        monkeypatch.setenv(k, v)
    code, _, err = run(["--oms.page-limit", "101", "--log.level", "x", "--check-config"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 3


def test_empty_config_file_flag(capsys):
    code, _, err = run(["--config.file=", "--check-config"], capsys)
    assert code == 2 and "--config.file: is empty" in err


def test_missing_config_file(capsys):
    code, _, err = run(["--config.file", "/nonexistent.yml", "--check-config"], capsys)
    assert code == 2 and "--config.file: cannot read /nonexistent.yml" in err


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800),
                                           ("500ms", 0.5), ("2.5", 2.5), (10, 10)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_load_raises_settings_error_with_lines(monkeypatch):
    monkeypatch.setenv("OMS_PROJECT_ID", "p1")
    with pytest.raises(SettingsError) as exc:
        load({"page_limit": 500}, None)
    assert any(line.startswith("--oms.page-limit") for line in exc.value.lines)
    assert any(line.startswith("OMS_REGION") for line in exc.value.lines)


@pytest.mark.slow  # the program as a process
def test_process_exit_code_and_no_listening(tmp_path):
    res = run_exporter_once("--oms.page-limit", "500", env=GOOD_ENV)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "oms-exporter: error: --oms.page-limit: Input should be less than or equal to 100"]


def test_listen_address_in_use_is_a_clear_error(monkeypatch, capsys):
    import socket
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = run(["--web.listen-address", f"127.0.0.1:{port}"], capsys)
    assert code == 2 and "cannot listen on" in err


CA_CONTENT = "key=CA-FILE-CONTENT-51c9"


def _bad_ca_files(tmp_path):
    """Files that are not PEM CA bundles, each carrying CA_CONTENT that no message may quote."""
    import trustme

    key = trustme.CA().issue_cert("x").private_key_pem.bytes().decode()
    files = {"text": f"not a certificate\n{CA_CONTENT}\n", "empty": "",
             "bad base64": f"-----BEGIN CERTIFICATE-----\n{CA_CONTENT}!!\n-----END CERTIFICATE-----\n",
             "a private key": f"# {CA_CONTENT}\n{key}"}
    for name, text in files.items():
        path = tmp_path / name.replace(" ", "-")
        path.write_text(text)
        yield name, path


def test_a_ca_file_that_is_not_a_pem_bundle_is_a_bad_setting(tmp_path, monkeypatch, capsys):
    import trustme

    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    good = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(good))
    assert run(["--oms.ca-file", str(good), "--check-config"], capsys)[0] == 0
    for name, path in _bad_ca_files(tmp_path):
        code, out, err = run(["--oms.ca-file", str(path), "--check-config"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "configuration OK" not in out, (name, err)
        assert lines[0].startswith(f"oms-exporter: error: --oms.ca-file: {path} is not a PEM CA bundle ("), lines
        assert CA_CONTENT not in err


@pytest.mark.slow  # the program as a process
def test_the_program_does_not_start_with_a_bad_ca_file(tmp_path):
    (_, path), *_ = _bad_ca_files(tmp_path)
    proc = run_exporter_once("--oms.ca-file", str(path), "--web.listen-address", f"127.0.0.1:{free_port()}",
                             env=GOOD_ENV)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"oms-exporter: error: --oms.ca-file: {path} is not a PEM CA bundle ("), lines
    assert "listening" not in proc.stderr and CA_CONTENT not in proc.stderr


def test_a_ca_file_broken_after_it_was_read_is_one_settings_line(tmp_path):
    """What a reload (or the start) meets when the file changes between reading the settings and using them."""
    import trustme

    from oms_exporter.generation import outbound_ssl
    from oms_exporter.settings import Options, Settings, Target

    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    settings = Settings(options=Options(ca_file=path),
                        targets=[Target(name="a", project_id="p", region="cn-north-4", auth_token="t")])
    assert outbound_ssl(settings) is not True
    path.write_text(f"{CA_CONTENT}\n")
    with pytest.raises(SettingsError) as caught:
        outbound_ssl(settings)
    assert caught.value.lines == [f"--oms.ca-file: {path} is not a PEM CA bundle (no certificate or crl found)"]


def test_static_labels_cannot_take_a_label_any_family_sets() -> None:
    """A target's static labels become target labels of every series of its /probe scrape: none may
    be a label a family of the exporter sets (or the id label of an area's records)."""
    from oms_exporter.catalog import AREAS, FAMILIES
    from oms_exporter.metrics import SELF_FAMILIES
    from oms_exporter.settings import RESERVED_LABELS

    used = {label for f in (*FAMILIES, *SELF_FAMILIES) for label in f.labels}
    used |= {area.kind.id_label for area in AREAS}
    assert used <= RESERVED_LABELS, sorted(used - RESERVED_LABELS)
