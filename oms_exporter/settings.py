"""Settings: the projects to watch (environment or YAML file) and the exporter's options (flags).

Everything is validated before the server starts. `load()` turns every problem into a
`SettingsError` holding one line per bad setting, each naming the setting the way the
user wrote it (`OMS_REGION`, `targets[1].endpoint`, `--oms.page-limit`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml  # type: ignore[import-untyped]
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(value: Any) -> float:
    """Prometheus-style duration (`1h30m`, `7d`, `500ms`) or a plain number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        raise ValueError("should be a duration such as 30s, 5m or 7d")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 7d")
    return total


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, allow_inf_nan=False)]


def _check_http_url(value: str | None) -> str | None:
    if value is None:
        return None
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    if url.user is not None or url.password is not None:
        raise ValueError("should not carry a user or password (credentials have their own settings)")
    if url.query_string or url.fragment:
        raise ValueError(f"{value!r} should not carry a query or fragment")
    return str(url).rstrip("/")


HttpUrlStr = Annotated[str | None, BeforeValidator(_check_http_url)]
# The largest `offset` the ListTasks reference documents.
MAX_OFFSET = 2147483647
NonEmpty = Annotated[str, Field(min_length=1)]

# Secret fields and the `*_file` twin each one may be read from.
SECRET_FIELDS = ("auth_token", "ak", "sk", "security_token", "iam_password")
AUTH_MODES = {
    "token": ("auth_token",),
    "aksk": ("ak", "sk"),
    "iam": ("iam_username", "iam_password", "iam_domain"),
}


class Target(BaseModel):
    """One OMS project to list: where it is and how to authenticate."""

    # hide_input_in_errors: the input holds secrets as plain strings.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    project_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")]
    endpoint: HttpUrlStr = None

    auth_token: SecretStr | None = None
    auth_token_file: Path | None = None
    ak: SecretStr | None = None
    ak_file: Path | None = None
    sk: SecretStr | None = None
    sk_file: Path | None = None
    security_token: SecretStr | None = None
    security_token_file: Path | None = None
    iam_username: str | None = None
    iam_password: SecretStr | None = None
    iam_password_file: Path | None = None
    iam_domain: str | None = None
    iam_endpoint: HttpUrlStr = None

    # Listing shape.
    statuses: list[Annotated[int, Field(ge=1, le=7)]] | None = Field(default=None, min_length=1)
    group_ids: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(default=None, min_length=1)
    # Highest `offset` to ask for: the documented maximum by default. An API edition that
    # caps it lower (one caps it at 10,000) answers 400; the lister then learns that cap and
    # lists per status. Set lower only to skip that one refused request.
    max_offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = MAX_OFFSET

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for field in SECRET_FIELDS:
            path = data.get(f"{field}_file")
            if path in (None, ""):
                continue
            if data.get(field) not in (None, ""):
                raise ValueError(f"set {field} or {field}_file, not both")
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{field}_file: cannot read {path}: {exc.strerror}") from None
            if not value:
                raise ValueError(f"{field}_file: {path} is empty")
            data[field] = value
        return data

    @model_validator(mode="after")
    def _one_auth_mode(self) -> Target:
        present = {
            mode: [f for f in fields if getattr(self, f) not in (None, "")]
            for mode, fields in AUTH_MODES.items()
        }
        chosen = [mode for mode, fields in present.items() if fields]
        if len(chosen) > 1:
            named = " and ".join(f"{m} ({', '.join(present[m])})" for m in chosen)
            raise ValueError(f"configure one authentication mode, not {named}")
        if not chosen:
            raise ValueError("no credentials: set auth_token, ak + sk, or iam_username + iam_password + iam_domain")
        mode = chosen[0]
        missing = [f for f in AUTH_MODES[mode] if getattr(self, f) in (None, "")]
        if missing:
            raise ValueError(f"{mode} authentication also needs {', '.join(missing)}")
        if self.security_token is not None and mode != "aksk":
            raise ValueError("security_token goes with ak + sk (temporary credentials)")
        return self

    @property
    def auth_mode(self) -> Literal["token", "aksk", "iam"]:
        for mode, fields in AUTH_MODES.items():
            if getattr(self, fields[0]) is not None:
                return mode  # type: ignore[return-value]
        raise AssertionError("validated target without credentials")

    @property
    def oms_endpoint(self) -> str:
        return self.endpoint or f"https://oms.{self.region}.myhuaweicloud.com"

    @property
    def iam_url(self) -> str:
        return self.iam_endpoint or f"https://iam.{self.region}.myhuaweicloud.com"


class FileConfig(BaseModel):
    """The YAML file given with --config.file."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    targets: list[Target] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[Target]) -> list[Target]:
        names: set[str] = set()
        projects: set[str] = set()
        for t in targets:
            if t.name in names:
                raise ValueError(f"target name {t.name!r} is used twice")
            # project_id is the label that tells series apart: one target per project.
            if t.project_id in projects:
                raise ValueError(f"project_id {t.project_id!r} is used by two targets")
            names.add(t.name)
            projects.add(t.project_id)
        return targets


class EnvTarget(BaseSettings):
    """One project from OMS_* environment variables (the SDK's CLOUD_SDK_AK/SK are read too)."""

    model_config = SettingsConfigDict(env_prefix="OMS_", extra="ignore", case_sensitive=False)

    target_name: str = "default"
    project_id: str | None = None
    region: str | None = None
    endpoint: str | None = None
    auth_token: str | None = None
    auth_token_file: str | None = None
    ak: str | None = None
    ak_file: str | None = None
    sk: str | None = None
    sk_file: str | None = None
    security_token: str | None = None
    security_token_file: str | None = None
    # The official SDK samples' variables: a fallback used only when no OMS_* credential is
    # set, since they are often set for other tools on the same machine.
    sdk_ak: str | None = Field(default=None, validation_alias=AliasChoices("CLOUD_SDK_AK"))
    sdk_sk: str | None = Field(default=None, validation_alias=AliasChoices("CLOUD_SDK_SK"))
    sdk_security_token: str | None = Field(default=None, validation_alias=AliasChoices("CLOUD_SDK_SECURITY_TOKEN"))
    iam_username: str | None = None
    iam_password: str | None = None
    iam_password_file: str | None = None
    iam_domain: str | None = None
    iam_endpoint: str | None = None
    max_offset: str | None = None

    def target_data(self) -> dict[str, Any] | None:
        data = self.model_dump(exclude_none=True)
        name = data.pop("target_name")
        sdk = {k.removeprefix("sdk_"): data.pop(k) for k in ("sdk_ak", "sdk_sk", "sdk_security_token") if k in data}
        # The SDK variables may be set for other tools: they alone do not define a project.
        if not data:
            return None
        if not _ENV_CREDENTIALS & set(data):
            for field, value in sdk.items():
                if f"{field}_file" not in data:
                    data.setdefault(field, value)
        return {"name": name, **data}


# OMS_* credential settings that, when any is set, make the CLOUD_SDK_* variables ignored
# (a security token alone does not: it may complete the SDK's pair).
_ENV_CREDENTIALS = {
    "auth_token", "auth_token_file", "ak", "ak_file", "sk", "sk_file",
    "iam_username", "iam_password", "iam_password_file", "iam_domain",
}


class Options(BaseModel):
    """Exporter-wide options, from command-line flags."""

    model_config = ConfigDict(extra="forbid")

    listen_address: str = ":10066"
    telemetry_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")] = "/metrics"
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"
    max_concurrency: Annotated[int, Field(ge=1, le=100)] = 32
    page_limit: Annotated[int, Field(ge=1, le=100)] = 100
    # Scrape budget when Prometheus sends no X-Prometheus-Scrape-Timeout-Seconds header,
    # and the margin kept back from the header's value so that the answer arrives in time.
    scrape_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    timeout_offset: Duration = 0.5
    min_interval: Duration = 0.0
    # Succeeded tasks that ended longer ago get no per-task series; failed tasks keep theirs
    # (a failed task is still failed) unless failed_task_max_age says otherwise.
    finished_task_max_age: Duration = 7 * 86400.0
    failed_task_max_age: Duration = 0.0
    per_task_series: bool = True
    ca_file: Path | None = None
    insecure_skip_verify: bool = False

    @field_validator("listen_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} should be [host]:port, e.g. :10066 or 127.0.0.1:10066")
        return value

    @field_validator("telemetry_path")
    @classmethod
    def _free_path(cls, value: str) -> str:
        if value in ("/probe", "/healthz"):
            raise ValueError(f"{value} is the path of another endpoint")
        return value

    @model_validator(mode="after")
    def _offset_below_timeout(self) -> Options:
        if self.timeout_offset >= self.scrape_timeout:
            raise ValueError(f"--oms.timeout-offset ({self.timeout_offset:g}s) must be smaller than "
                             f"--oms.scrape-timeout ({self.scrape_timeout:g}s)")
        return self

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @property
    def host_port(self) -> tuple[str | None, int]:
        host, _, port = self.listen_address.rpartition(":")
        host = host.strip("[]")
        return (host or None), int(port)


class Settings(BaseModel):
    options: Options
    targets: list[Target]

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


class SettingsError(Exception):
    """Bad settings; `lines` holds one human-readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _lines(exc: ValidationError, name_of: Any) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name_of(err['loc'])}: {msg}")
    return lines


def load(flags: dict[str, Any], config_file: Path | None, *, only_target: Target | None = None) -> Settings:
    """Build and validate all settings (flags, YAML file, OMS_* environment), or raise SettingsError.

    With `only_target` (the demo), that target replaces the file and the environment.
    """
    errors: list[str] = []

    try:
        options = Options.model_validate(flags)
    except ValidationError as exc:
        errors += _lines(exc, lambda loc: "--" + _flag_name(str(loc[0])) if loc else "flags")
        options = None

    targets: list[Target] = []
    if only_target is not None:
        targets, config_file = [only_target], None
    if config_file is not None:
        try:
            raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            errors.append(f"--config.file: cannot read {config_file}: {exc.strerror}")
            raw = None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            errors.append(f"--config.file: {config_file}{where} is not valid YAML")
            raw = None
        else:
            try:
                targets = FileConfig.model_validate(raw if raw is not None else {}).targets
            except ValidationError as exc:
                errors += _lines(exc, lambda loc: f"{config_file}: {_loc(loc) or 'file'}")

    data = EnvTarget().target_data() if only_target is None else None
    if data is not None:
        try:
            env_target = Target.model_validate(data)
        except ValidationError as exc:
            errors += _lines(exc, lambda loc: _env_name(str(loc[0])) if loc else "OMS_* environment")
        else:
            if any(t.name == env_target.name for t in targets):
                errors.append(f"OMS_TARGET_NAME: target name {env_target.name!r} is also in {config_file}")
            elif any(t.project_id == env_target.project_id for t in targets):
                errors.append(f"OMS_PROJECT_ID: project {env_target.project_id} is also in {config_file}")
            targets.append(env_target)

    if not errors and not targets:
        errors.append("no project configured: set OMS_PROJECT_ID, OMS_REGION and credentials, "
                      "or give --config.file with targets")
    if errors:
        raise SettingsError(errors)
    assert options is not None
    return Settings(options=options, targets=targets)


def _env_name(field: str) -> str:
    return "OMS_TARGET_NAME" if field == "name" else "OMS_" + field.upper()


def _flag_name(field: str) -> str:
    return FLAG_NAMES.get(field, field)


# Options field -> command-line flag (without the leading dashes).
FLAG_NAMES = {
    "listen_address": "web.listen-address",
    "telemetry_path": "web.telemetry-path",
    "log_level": "log.level",
    "log_format": "log.format",
    "max_concurrency": "oms.max-concurrency",
    "page_limit": "oms.page-limit",
    "scrape_timeout": "oms.scrape-timeout",
    "timeout_offset": "oms.timeout-offset",
    "min_interval": "oms.min-interval",
    "finished_task_max_age": "oms.finished-task-max-age",
    "failed_task_max_age": "oms.failed-task-max-age",
    "per_task_series": "oms.per-task-series",
    "ca_file": "oms.ca-file",
    "insecure_skip_verify": "oms.insecure-skip-verify",
}
