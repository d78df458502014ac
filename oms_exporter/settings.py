"""Settings: every setting of the exporter, each defined once, and their validation.

Each field of `Options` (exporter-wide, from command-line flags; a few also from the environment
and the YAML file's top level) and of `Target` (one project, from the `OMS_*` environment or a
YAML file's `targets:`) carries its type, default, help and the names it goes by (`flag`, `env`,
`yaml`): the flags, the environment loading and the README's configuration table are all made
from these fields. Everything is validated before the server starts: `load()` turns every
problem into a `SettingsError` holding one line per bad setting, each naming the setting the
way the user wrote it (`OMS_REGION`, `targets[1].endpoint`, `--oms.page-limit`).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from oms_exporter.shards import Shard, ordinal


def setting(default: Any, help: str, *, flag: str | None = None, env: str | None = None, shown: str | None = None,
            yaml: str | None = None, **constraints: Any) -> Any:
    """A setting: its default, help text, and the flag or environment variable it is read from.

    `shown` is the default as the README states it, where the value alone would not say it.
    `yaml`: an exporter-wide option (a flag) that the environment (`env`) and the YAML file may
    set too, under this key (`shard.count`: `count` in the file's `shard:` mapping); a flag wins
    over the environment, which wins over the file.
    """
    extra: dict[str, Any] = {k: v for k, v in (("flag", flag), ("env", env), ("shown", shown), ("yaml", yaml))
                             if v is not None}
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def meta(info: FieldInfo) -> dict[str, Any]:
    """The flag, env and shown-default of a setting defined with `setting()`."""
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


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

_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(value: Any) -> int:
    """A size in bytes: `8MiB`, `512KiB`, `16MB`, or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a size such as 8MiB, 512KiB or 1000000")
    return int(m.group(1)) * _UNIT_BYTES[(m.group(2) or "b").lower()]


ByteSize = Annotated[int, BeforeValidator(parse_size)]


def format_duration(seconds: float) -> str:
    """`seconds` the way Prometheus writes a duration (`7d`, `15m`, `500ms`), or `0`."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return "0" if not seconds else f"{seconds:g}s"


def shown_default(info: FieldInfo) -> str:
    """The default of a setting as the README and --help state it."""
    shown = meta(info).get("shown")
    if shown is not None:
        return str(shown).replace("`", "")
    value = info.default
    if value is None or info.is_required():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and any(getattr(m, "func", None) is parse_duration for m in info.metadata):
        return format_duration(value)
    return str(value)


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
PROJECT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # a project id as the exporter accepts one
MAX_OFFSET = 2147483647
NonEmpty = Annotated[str, Field(min_length=1)]
# Names a target's or a discovery entry's static labels may not take: those the exporter sets itself
# on any series (a static label is a target label of every series of a /probe scrape), and
# Prometheus' own (tests/test_settings.py checks every family's labels are here).
RESERVED_LABELS = frozenset({
    "project_id", "project_name", "region", "job", "instance", "discovery", "le", "quantile",
    "task_id", "group_id", "sync_task_id", "status", "state", "name", "reason", "code", "collector", "kind",
    "result", "version", "group_type", "task_type", "priority", "error_code", "error_msg", "start", "end",
    "src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket", "index", "count"})


def _label_name(name: str) -> str:
    if name in RESERVED_LABELS or name.startswith("__"):
        raise ValueError(f"{name!r} is a label the exporter or Prometheus sets itself")
    return name


LabelName = Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$"), AfterValidator(_label_name)]

# Secret fields and the `*_file` twin each one may be read from.
SECRET_FIELDS = ("auth_token", "ak", "sk", "security_token", "iam_password")
AUTH_MODES = {
    "token": ("auth_token",),
    "aksk": ("ak", "sk"),
    "iam": ("iam_username", "iam_password", "iam_domain"),
}


class Credentials(BaseModel):
    """How to authenticate to IAM and OMS: one mode of three (YAML keys are the field names).

    A target and a discovery entry both carry them, with the API areas' `<area>: true|false` keys.
    """

    # hide_input_in_errors: the input holds secrets as plain strings.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    auth_token: SecretStr | None = setting(None, "static IAM token (see Authentication)", env="OMS_AUTH_TOKEN")
    auth_token_file: Path | None = setting(None, "file holding auth_token", env="OMS_AUTH_TOKEN_FILE")
    ak: SecretStr | None = setting(None, "access key (AK/SK signing)", env="OMS_AK")
    ak_file: Path | None = setting(None, "file holding ak", env="OMS_AK_FILE")
    sk: SecretStr | None = setting(None, "secret key (AK/SK signing)", env="OMS_SK")
    sk_file: Path | None = setting(None, "file holding sk", env="OMS_SK_FILE")
    security_token: SecretStr | None = setting(None, "security token of temporary AK/SK credentials",
                                               env="OMS_SECURITY_TOKEN")
    security_token_file: Path | None = setting(None, "file holding security_token", env="OMS_SECURITY_TOKEN_FILE")
    iam_username: str | None = setting(None, "IAM user (IAM password login)", env="OMS_IAM_USERNAME")
    iam_password: SecretStr | None = setting(None, "IAM user's password", env="OMS_IAM_PASSWORD")
    iam_password_file: Path | None = setting(None, "file holding iam_password", env="OMS_IAM_PASSWORD_FILE")
    iam_domain: str | None = setting(None, "account (domain) name of the IAM user", env="OMS_IAM_DOMAIN")
    iam_endpoint: HttpUrlStr = setting(None, "IAM endpoint", env="OMS_IAM_ENDPOINT",
                                       shown="`https://iam.{region}.myhuaweicloud.com` (a target), "
                                             "`https://iam.myhuaweicloud.com` (discovery)")
    labels: dict[LabelName, Annotated[str, Field(max_length=1024)]] = setting(
        {}, "static labels (`team: data`): on the target's `oms_project_info` and its `/discovery` group "
            "(of a discovery entry: on each of its targets)", shown="none", max_length=32)
    # `<area>: true|false` keys (task_groups, sync_tasks: see catalog.AREAS), gathered here when the
    # validation context names the areas; they override the `--collector.<area>` flags.
    collectors: dict[str, bool] = Field(default_factory=dict, exclude=True)

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

    @model_validator(mode="before")
    @classmethod
    def _area_switches(cls, data: Any, info: ValidationInfo) -> Any:
        areas = (info.context or {}).get("areas", ())
        if not isinstance(data, dict) or not areas:
            return data
        if "collectors" in data:
            raise ValueError(f"collectors: not a setting; switch an API area with its name ({', '.join(areas)}): "
                             "true|false")
        data = dict(data)
        data["collectors"] = {name: data.pop(name) for name in areas if name in data}
        return data

    def _check_auth(self, required: bool) -> None:
        present = {
            mode: [f for f in fields if getattr(self, f) not in (None, "")]
            for mode, fields in AUTH_MODES.items()
        }
        chosen = [mode for mode, fields in present.items() if fields]
        if len(chosen) > 1:
            named = " and ".join(f"{m} ({', '.join(present[m])})" for m in chosen)
            raise ValueError(f"configure one authentication mode, not {named}")
        if not chosen:
            if required:
                raise ValueError("no credentials: set auth_token, ak + sk, or iam_username + iam_password + "
                                 "iam_domain")
            return
        mode = chosen[0]
        missing = [f for f in AUTH_MODES[mode] if getattr(self, f) in (None, "")]
        if missing:
            raise ValueError(f"{mode} authentication also needs {', '.join(missing)}")
        if self.security_token is not None and mode != "aksk":
            raise ValueError("security_token goes with ak + sk (temporary credentials)")

    @property
    def auth_mode(self) -> Literal["token", "aksk", "iam"]:
        for mode, fields in AUTH_MODES.items():
            if getattr(self, fields[0]) is not None:
                return mode  # type: ignore[return-value]
        raise AssertionError("validated settings without credentials")

    @property
    def has_credentials(self) -> bool:
        return any(getattr(self, fields[0]) is not None for fields in AUTH_MODES.values())

    def credentials(self) -> dict[str, Any]:
        """The credential fields that are set, as input for another model (a discovered target)."""
        names = [f for fields in AUTH_MODES.values() for f in fields] + ["security_token", "iam_endpoint"]
        return {f: getattr(self, f) for f in names if getattr(self, f) is not None}


class Target(Credentials):
    """One OMS project to list: where it is and how to authenticate (YAML keys are the field names)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-][A-Za-z0-9_.:/-]{0,96}$")] = setting(
        ..., "target name for `/probe?target=`", env="OMS_TARGET_NAME", shown="`default` (env)")
    project_id: Annotated[str, Field(pattern=PROJECT_ID_PATTERN)] = setting(
        ..., "project to list (required)", env="OMS_PROJECT_ID")
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")] = setting(
        ..., "region, e.g. `cn-north-4` (required)", env="OMS_REGION")
    endpoint: HttpUrlStr = setting(None, "OMS endpoint", env="OMS_ENDPOINT",
                                   shown="`https://oms.{region}.myhuaweicloud.com`")
    project_name: Annotated[str, Field(min_length=1, max_length=64)] | None = setting(
        None, "the project's name, as `oms_project_info` shows it", shown="the target's name")

    # Listing shape.
    statuses: list[Annotated[int, Field(ge=1, le=7)]] | None = setting(
        None, "only list tasks in these states (codes 1..7)", min_length=1, shown="all")
    group_ids: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = setting(
        None, "only list tasks (and serve task groups) of these task groups", min_length=1, shown="all")
    # An API edition that caps offsets lower answers 400; the lister then learns that cap and
    # lists per status. Set lower only to skip that one refused request.
    max_offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = setting(
        MAX_OFFSET, "highest `offset` to ask for; an API edition that refuses a lower one is learned anyway "
                    "(see *Listing*)", env="OMS_MAX_OFFSET", shown="`2147483647` (documented maximum)")

    @field_validator("statuses", "group_ids")
    @classmethod
    def _once_each(cls, values: list[Any] | None) -> list[Any] | None:
        # A state or group named twice would be listed (and counted) twice.
        return None if values is None else list(dict.fromkeys(values))

    @model_validator(mode="after")
    def _one_auth_mode(self) -> Target:
        self._check_auth(required=True)
        return self

    @property
    def oms_endpoint(self) -> str:
        return self.endpoint or f"https://oms.{self.region}.myhuaweicloud.com"

    @property
    def iam_url(self) -> str:
        return self.iam_endpoint or f"https://iam.{self.region}.myhuaweicloud.com"


# The regions with an OMS endpoint in the official SDK (huaweicloudsdkoms/v2/region/oms_region.py, 3.1.2xx).
OMS_REGIONS = frozenset({
    "cn-north-4", "cn-north-1", "cn-east-2", "cn-east-3", "cn-south-1", "ap-southeast-1", "ap-southeast-3",
    "la-south-2", "cn-south-4", "cn-southwest-2", "ap-southeast-4", "cn-north-9", "ap-southeast-2", "la-north-2",
    "tr-west-1", "sa-brazil-1", "me-east-1", "af-south-1", "cn-east-4", "ap-southeast-5", "cn-north-12",
})
GLOBAL_IAM = "https://iam.myhuaweicloud.com"
Region = Annotated[str, Field(pattern=r"^[a-z]{2}-[a-z]+-[0-9]{1,3}$")]


def _pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return value


def _patterns(value: Any) -> tuple[str, ...]:
    """Regular expressions from a comma-separated text (a flag, a variable) or a YAML list (where a
    pattern may hold a comma): blanks around each are dropped, and empty ones."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError("should be regular expressions, comma-separated or a YAML list")
    return tuple(_pattern(i.strip()) for i in items if i.strip())


Patterns = Annotated[tuple[str, ...], BeforeValidator(_patterns)]


def _endpoint_template(value: str) -> str:
    if "{region}" not in value:
        raise ValueError(f"{value!r} should hold {{region}}")
    checked = _check_http_url(value.replace("{region}", "region"))
    assert checked is not None
    return value.rstrip("/")


class DiscoveryEntry(Credentials):
    """One account's projects found with IAM (`discovery:` in the YAML file; a list for several accounts)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = setting(
        "default", "the entry's name: its `discovery` label, and the prefix of its targets' names (`acme/cn-north-4`) "
                   "unless it is `default`")
    refresh_interval: Annotated[Duration, Field(ge=1)] = setting(
        600.0, "how often the project list is asked of IAM again (a failed refresh keeps the last good list)")
    regions: list[Region] | None = setting(None, "only projects of these regions", min_length=1, shown="all")
    exclude_regions: list[Region] = setting([], "no project of these regions", shown="none")
    projects: list[Annotated[str, AfterValidator(_pattern)]] | None = setting(
        None, "only projects whose name matches one of these regular expressions (whole name)", min_length=1,
        shown="all")
    exclude_projects: list[Annotated[str, AfterValidator(_pattern)]] = setting(
        [], "no project whose name matches one of these regular expressions (whole name)", shown="none")
    endpoint: Annotated[str, AfterValidator(_endpoint_template)] = setting(
        "https://oms.{region}.myhuaweicloud.com", "OMS endpoint of each region, `{region}` replaced")
    endpoints: dict[Region, HttpUrlStr] = setting(
        {}, "OMS endpoint of a region, instead of the template (also the way to add a region the built-in "
            "list lacks)", shown="none")

    @model_validator(mode="after")
    def _can_discover(self) -> DiscoveryEntry:
        if self.auth_token is not None:
            raise ValueError("a static token cannot discover projects (it is scoped to one project): "
                             "use ak + sk, or iam_username + iam_password + iam_domain")
        self._check_auth(required=False)
        return self

    @property
    def iam_url(self) -> str:
        return self.iam_endpoint or GLOBAL_IAM

    def oms_endpoint(self, region: str) -> str | None:
        """The OMS endpoint of `region`, or None when OMS is not offered there (as far as it is known)."""
        if region in self.endpoints:
            return self.endpoints[region]
        return self.endpoint.replace("{region}", region) if region in OMS_REGIONS else None

    def target_name(self, project_name: str) -> str:
        return project_name if self.name == "default" else f"{self.name}/{project_name}"


class FileConfig(BaseModel):
    """The YAML file given with --config.file."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    targets: list[Target] = []
    discovery: list[DiscoveryEntry] = []

    @field_validator("discovery", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

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

    @field_validator("discovery")
    @classmethod
    def _unique_entries(cls, entries: list[DiscoveryEntry]) -> list[DiscoveryEntry]:
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError("each discovery entry needs a name of its own (`name: acme`)")
        return entries

    @model_validator(mode="after")
    def _something(self) -> FileConfig:
        if not self.targets and not self.discovery:
            raise ValueError("give `targets:`, `discovery:`, or both")
        return self


class _EnvBase(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)


def _env_loader() -> type[BaseSettings]:
    """A pydantic-settings model of every Target field read from the environment, as plain strings."""
    fields: dict[str, Any] = {
        name: (str | None, Field(None, validation_alias=AliasChoices(meta(info)["env"])))
        for name, info in Target.model_fields.items() if "env" in meta(info)}
    # The official SDK samples' variables: a fallback used only when no OMS_* credential is
    # set, since they are often set for other tools on the same machine.
    for field in ("ak", "sk", "security_token"):
        fields[f"sdk_{field}"] = (str | None, Field(None, validation_alias=AliasChoices(f"CLOUD_SDK_{field.upper()}")))
    return create_model("EnvTarget", __base__=_EnvBase, **fields)


def env_target() -> dict[str, Any] | None:
    """The target the OMS_* environment defines, as Target input, or None when it defines none.

    Credentials alone define no target: with no project in the environment (nor a file), they
    are the credentials of discovery (`env_credentials`)."""
    data = _env_loader()().model_dump(exclude_none=True)
    name = data.pop("name", "default")
    sdk = {k.removeprefix("sdk_"): data.pop(k) for k in ("sdk_ak", "sdk_sk", "sdk_security_token") if k in data}
    # The SDK variables may be set for other tools: they alone do not define a project.
    if not data.keys() - _ENV_CREDENTIALS - {"security_token", "security_token_file", "iam_endpoint"}:
        return None
    if not _ENV_CREDENTIALS & set(data):
        for field, value in sdk.items():
            if f"{field}_file" not in data:
                data.setdefault(field, value)
    return {"name": name, **data}


def env_credentials(sdk_too: bool = True) -> dict[str, Any]:
    """The credentials of the environment (OMS_*, else, with `sdk_too`, the SDK's CLOUD_SDK_AK/SK), as
    input for a discovery entry; {} when it has none."""
    data = _env_loader()().model_dump(exclude_none=True)
    sdk = {k.removeprefix("sdk_"): data.pop(k) for k in ("sdk_ak", "sdk_sk", "sdk_security_token") if k in data}
    creds = {k: v for k, v in data.items() if k in _ENV_CREDENTIALS | {"security_token", "security_token_file",
                                                                         "iam_endpoint"}}
    if sdk_too and not _ENV_CREDENTIALS & set(creds) and "ak" in sdk and "sk" in sdk:
        creds.update(sdk)
    return creds if _ENV_CREDENTIALS & set(creds) else {}


# OMS_* credential settings that, when any is set, make the CLOUD_SDK_* variables ignored
# (a security token alone does not: it may complete the SDK's pair).
_ENV_CREDENTIALS = {
    "auth_token", "auth_token_file", "ak", "ak_file", "sk", "sk_file",
    "iam_username", "iam_password", "iam_password_file", "iam_domain",
}


def _shard_index(value: Any) -> Any:
    """`auto`: the ordinal of this host's name, a StatefulSet pod's (ValueError when it has none)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return ordinal(socket.gethostname())
    return value


class Options(BaseModel):
    """Exporter-wide options, from command-line flags; those with an `env` and a `yaml` name also from that
    environment variable and that top-level key of the YAML file (the flag wins, then the variable)."""

    model_config = ConfigDict(extra="forbid")

    config_file: Path | None = setting(
        None, "YAML file with `targets:` (projects to list) and `discovery:`; `OMS_*` variables add one more target "
        "(or, without a project, discover with their credentials)", flag="config.file")
    web_config_file: Path | None = setting(
        None, "TLS and basic auth of the exporter's endpoint (exporter-toolkit format, see below)",
        flag="web.config.file")
    discovery_iam_endpoint: HttpUrlStr = setting(
        None, "IAM endpoint of the discovery entries that set none", flag="discovery.iam-endpoint",
        shown="`https://iam.myhuaweicloud.com`")
    discovery_refresh_interval: Annotated[Duration, Field(ge=1)] | None = setting(
        None, "refresh interval of the discovery entries that set none", flag="discovery.refresh-interval",
        shown="`10m`")
    discovery_regions: Annotated[str, Field(pattern=r"^[a-z0-9,-]+$")] | None = setting(
        None, "regions (comma-separated) of the discovery entries that set none", flag="discovery.regions",
        shown="all")
    web_external_url: HttpUrlStr = setting(
        None, "the exporter's address as Prometheus reaches it, for `/discovery`'s targets", flag="web.external-url",
        shown="the address each request came to")
    # Shards (kube-state-metrics' --total-shards and --shard): replicas that split the targets.
    shard_count: Annotated[int, Field(ge=1, le=1000)] = setting(
        1, "replicas that split the targets (configured and discovered) between them by `project_id`: each "
        "serves only its shard's on `/metrics`, `/probe` and `/discovery`", flag="shard.count",
        env="OMS_SHARD_COUNT", yaml="shard.count")
    shard_index: Annotated[int, BeforeValidator(_shard_index), Field(ge=0)] = setting(
        0, "this replica's shard, `0` to `--shard.count` − 1; `auto`: the ordinal of a StatefulSet pod's host "
        "name (`oms-exporter-2` → 2)", flag="shard.index", env="OMS_SHARD_INDEX", yaml="shard.index")
    check_config: bool = setting(
        False, "validate the settings (and the web config file) and exit (0 good, 2 bad)", flag="check-config")
    listen_address: str = setting(":10066", "address to listen on", flag="web.listen-address")
    web_max_connections: Annotated[int, Field(ge=0, le=1_000_000)] = setting(
        0, "client connections open at once; more wait in the listen backlog until one closes. `0`: derived "
        "from the open-file limit (raised to its hard limit at start), minus the upstream connections and 64",
        flag="web.max-connections", shown="`0`: min(512, open-file limit − upstream connections − 64)")
    read_header_timeout: Annotated[Duration, Field(gt=0)] = setting(
        10.0, "time a client has to send a request's head (and to finish a TLS handshake), from connecting or "
        "from the end of its previous answer; an idle kept-alive connection is closed after it too",
        flag="web.read-header-timeout")
    telemetry_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")] = setting(
        "/metrics", "path of the metrics endpoint", flag="web.telemetry-path")
    log_level: Literal["debug", "info", "warn", "error"] = setting(
        "info", "`debug`, `info`, `warn` or `error`", flag="log.level")
    log_format: Literal["logfmt", "json"] = setting("logfmt", "`logfmt` or `json`", flag="log.format")
    max_concurrency: Annotated[int, Field(ge=1, le=100)] = setting(
        32, "ListTasks/ShowTask requests in flight per project (1..100); task groups and sync tasks "
        "have a few slots of their own", flag="oms.max-concurrency")
    max_connections: Annotated[int, Field(ge=1, le=10000)] = setting(
        100, "connections to OMS and IAM open at once, every target together: beyond it requests wait for one "
        "(1..10000)", flag="oms.max-connections")
    max_response_size: Annotated[ByteSize, Field(ge=65536, le=1024**3)] = setting(
        8 * 1024**2, "largest answer one OMS or IAM request may bring, compressed and decompressed (`8MiB`: "
        "a page of 100 tasks is ~100 KB); a larger one fails the listing as `bad_payload`",
        flag="oms.max-response-size", shown="`8MiB`")
    max_records: Annotated[int, Field(ge=1000, le=100_000_000)] = setting(
        2_000_000, "the most records one list may say it has (its `count`); a larger count, or one that needs more "
        "pages than the time left can fetch, fails that collector at once as `bad_payload`",
        flag="oms.max-records")
    page_limit: Annotated[int, Field(ge=1, le=100)] = setting(
        100, "records per list page: tasks, task groups, sync tasks (1..100); neighbouring pages share two "
        "records, so a page holds `limit - 2` new ones (small limits cost many more requests)", flag="oms.page-limit")
    # The scrape budget when Prometheus sends no X-Prometheus-Scrape-Timeout-Seconds header,
    # and the margin kept back from the header's value so that the answer arrives in time.
    scrape_timeout: Annotated[Duration, Field(gt=0)] = setting(
        10.0, "scrape budget when Prometheus sends no `X-Prometheus-Scrape-Timeout-Seconds`",
        flag="oms.scrape-timeout")
    timeout_offset: Duration = setting(0.5, "margin kept back from the scrape timeout", flag="oms.timeout-offset")
    request_timeout: Annotated[Duration, Field(gt=0, le=600)] = setting(
        5.0, "time one request to OMS or IAM may take; then it is given up and tried again, within the scrape's "
        "deadline (a scrape with a longer deadline never holds the listing others share on a request that hangs)",
        flag="oms.request-timeout")
    listing_budget: Annotated[Duration, Field(ge=0, le=3600)] = setting(
        300.0, "how long a listing may go on past the deadline of the scrape that started it: it finishes in the "
        "background and the next scrape serves it (the first listing of a large account outlives a scrape); "
        "`0`: it stops at the scrape's deadline", flag="oms.listing-budget")
    listing: Literal["liveness", "full"] = setting(
        "liveness", "`liveness`: live states every scrape, finished tasks kept and checked by counts (see *Listing*); "
        "`full`: every task on every scrape", flag="oms.listing")
    finished_refresh_interval: Duration = setting(
        900.0, "with `--oms.listing=liveness`, list the finished states in full at least this often",
        flag="oms.finished-refresh-interval")
    min_interval: Duration = setting(
        0.0, "reuse a listing younger than this (for tight API quotas); `0` always lists", flag="oms.min-interval")
    # Succeeded tasks that ended longer ago get no per-task series; failed tasks keep theirs
    # (a failed task is still failed) unless failed_task_max_age says otherwise.
    finished_task_max_age: Duration = setting(
        7 * 86400.0, "succeeded tasks that ended longer ago get no per-task series (still counted in "
        "`oms_tasks` and the `oms_tasks_*` totals); `0` keeps all", flag="oms.finished-task-max-age")
    failed_task_max_age: Duration = setting(
        0.0, "failed tasks that ended longer ago get no per-task series, so `OmsTaskFailed` resolves for them "
        "(see its runbook); `0` (the default): a failed task keeps its series while it is failed",
        flag="oms.failed-task-max-age")
    per_task_series: bool = setting(True, "`false`: per-project aggregates only", flag="oms.per-task-series")
    metric_allowlist: Patterns = setting(
        (), "serve only the OMS families whose whole name one of these regular expressions matches "
        "(comma-separated; a YAML list); `oms_up`, `oms_collector_success`, `oms_project_info` always "
        "(see *Metrics*)", flag="metric-allowlist", env="OMS_METRIC_ALLOWLIST", yaml="metric_allowlist",
        shown="all")
    metric_denylist: Patterns = setting(
        (), "serve no OMS family whose whole name one of these regular expressions matches; not with "
        "`--metric-allowlist`", flag="metric-denylist", env="OMS_METRIC_DENYLIST", yaml="metric_denylist",
        shown="none")
    # `--collector.<area>` / `--no-collector.<area>` of the areas that can be switched off (cli.py).
    collectors: dict[str, bool] = Field(default_factory=dict)
    ca_file: Path | None = setting(None, "CA bundle for OMS/IAM TLS", flag="oms.ca-file", shown="system CAs")
    insecure_skip_verify: bool = setting(
        False, "skip TLS verification of OMS and IAM (logged loudly)", flag="oms.insecure-skip-verify")
    demo: bool = setting(False, "run against the built-in OMS stand-in with moving tasks (no cloud account)",
                         flag="demo")
    demo_tasks: Annotated[int, Field(ge=1, le=1_000_000)] = setting(
        300, "number of demo tasks", flag="demo.tasks")
    demo_auth: Literal["aksk", "token", "iam"] = setting(
        "aksk", "how the exporter authenticates to the demo stand-in: `aksk`, `token` or `iam`", flag="demo.auth")

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

    @field_validator("metric_denylist")
    @classmethod
    def _one_list(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if value and info.data.get("metric_allowlist"):
            raise ValueError("mutually exclusive with the allowlist (--metric-allowlist, OMS_METRIC_ALLOWLIST or "
                             "metric_allowlist), which is set too: give one of them")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_file():
                raise ValueError(f"{value} is not a readable file")
            ca_context(value)  # read as the requests will read it: a bad bundle is a bad setting
        return value

    @property
    def shard(self) -> Shard:
        return Shard(self.shard_index, self.shard_count)

    @property
    def host_port(self) -> tuple[str | None, int]:
        host, _, port = self.listen_address.rpartition(":")
        host = host.strip("[]")
        return (host or None), int(port)


def ca_context(path: Path) -> ssl.SSLContext:
    """The TLS context of OMS and IAM requests that trusts the CA bundle at `path` (and no other CA),
    or a ValueError of one line that never quotes the file."""
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        text = str(exc.args[1] if len(exc.args) > 1 else exc)  # "[X509: ...] no certificate or crl found (_ssl.c:..)"
        reason = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text) or type(exc).__name__
        raise ValueError(f"{path} is not a PEM CA bundle ({reason})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


class Settings(BaseModel):
    options: Options
    targets: list[Target]  # configured (the discovered ones come and go at run time)
    discovery: list[DiscoveryEntry] = Field(default_factory=list)
    # The API areas that can be switched off -> listed by default (catalog.switches()).
    switches: dict[str, bool] = Field(default_factory=dict)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    @property
    def info_labels(self) -> tuple[str, ...]:
        """The static label names of every target and discovery entry, in order: the extra labels of
        oms_project_info."""
        return tuple(sorted({k for c in (*self.targets, *self.discovery) for k in c.labels}))

    def lists(self, target: Target, area: str) -> bool:
        """Whether the API area `area` is listed for `target`: its own setting, else the flag's, else the
        area's default (an area that cannot be switched off always is)."""
        default = self.switches.get(area, True)
        return target.collectors.get(area, self.options.collectors.get(area, default))


class SettingsError(Exception):
    """Bad settings; `lines` holds one human-readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "collectors":  # a target's `<area>: bool` keys are gathered there
            continue
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


def load(flags: Mapping[str, Any], config_file: Path | None = None, *,
         only_target: Target | None = None, only: FileConfig | None = None,
         switches: Mapping[str, bool] | None = None) -> Settings:
    """Build and validate all settings (flags, YAML file, OMS_* environment), or raise SettingsError.

    `config_file` defaults to the `config_file` flag. With `only` (the demo; `only_target`: one
    target), that configuration replaces the file and the environment's target. `switches`: the API
    areas that can be switched off, and their defaults (catalog.switches()).
    """
    switches = dict(switches or {})
    errors: list[str] = []
    if config_file is None and flags.get("config_file") is not None:
        if not str(flags["config_file"]).strip():
            errors.append("--config.file: is empty (give the path of a YAML file with targets:)")
        else:
            config_file = Path(flags["config_file"])
    if only_target is not None:
        only = FileConfig(targets=[only_target])
    raw = _read_yaml(config_file, errors) if config_file is not None and only is None else _UNREAD
    raw, from_file = _file_options(raw, config_file, errors)
    options = _options(flags, switches, errors, from_file)
    if only is not None:
        targets, entries = list(only.targets), list(only.discovery)
    else:
        file = _file_config(raw, config_file, switches, errors) if config_file is not None else None
        targets, entries = (list(file.targets), list(file.discovery)) if file is not None else ([], [])
        _env_target(targets, config_file, errors)
        # OMS_* credentials and no project: discover every project. The SDK's variables are often set for
        # other tools: alone they start nothing (they complete a discovery entry's credentials).
        if not targets and not entries and config_file is None and env_target() is None and env_credentials(False):
            entries.append(DiscoveryEntry())
    entries = _complete(entries, options, errors)
    errors += _proxy_errors()
    if not errors and not targets and not entries:
        sdk_only = " (CLOUD_SDK_AK/CLOUD_SDK_SK alone start nothing: they are often set for other tools)" \
            if only is None and env_credentials() and not env_credentials(False) else ""
        errors.append("no project configured: set OMS_PROJECT_ID, OMS_REGION and credentials, or credentials alone "
                      f"(OMS_AK and OMS_SK) to discover every project, or give --config.file{sdk_only}")
    if errors or options is None:
        raise SettingsError(errors)
    return Settings(options=options, targets=targets, discovery=entries, switches=switches)


def _complete(entries: list[DiscoveryEntry], options: Options | None, errors: list[str]) -> list[DiscoveryEntry]:
    """The discovery entries with the environment's credentials where they have none, and the
    --discovery.* flags where they set nothing."""
    out = []
    flags: dict[str, Any] = {}
    if options is not None:
        if options.discovery_iam_endpoint:
            flags["iam_endpoint"] = options.discovery_iam_endpoint
        if options.discovery_refresh_interval is not None:
            flags["refresh_interval"] = options.discovery_refresh_interval
        if options.discovery_regions:
            flags["regions"] = [r for r in options.discovery_regions.split(",") if r]
    for entry in entries:
        update = {k: v for k, v in flags.items() if k not in entry.model_fields_set}
        if not entry.has_credentials:
            env = env_credentials()
            if "iam_endpoint" in entry.model_fields_set:
                del env["iam_endpoint"]
            update = env | update  # the entry's own keys, then the flags, win over the environment
        if update:
            try:
                entry = DiscoveryEntry.model_validate({**entry.model_dump(exclude_unset=True), **update,
                                                       "collectors": entry.collectors})
            except ValidationError as exc:
                errors += _lines(exc, lambda loc, name=entry.name: f"discovery {name}" + (f": {_loc(loc)}" if loc
                                                                                          else ""))
                continue
        if not entry.has_credentials:
            errors.append(f"discovery {entry.name}: no credentials: set ak + sk or iam_username + iam_password + "
                          "iam_domain in it, or OMS_AK and OMS_SK")
            continue
        out.append(entry)
    return out


def _proxy_errors() -> list[str]:
    """A proxy of the environment that requests could not go through, one line each."""
    errors = []
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        url = URL(value if "://" in value else "http://" + value)
        if url.scheme == "https":
            errors.append(f"{var}: an https:// proxy is not supported (requests cannot speak TLS to the proxy "
                          "itself): give its http:// URL")
        elif url.scheme != "http" or not url.host:
            errors.append(f"{var}: {url.scheme}:// is no proxy the exporter can use: give an http:// URL")
    return errors


def _options(flags: Mapping[str, Any], switches: Mapping[str, bool], errors: list[str],
             from_file: Mapping[str, tuple[Any, str]]) -> Options | None:
    """The options: the flags, then the environment and the file (`from_file`) for those they may set."""
    sources = {**from_file, **{f: (v, meta(Options.model_fields[f])["env"]) for f, v in _env_options().items()}}
    given = {**{f: v for f, (v, _) in sources.items()}, **flags}
    names = {f: name for f, (_, name) in sources.items() if f not in flags}  # how each was given, if not a flag
    try:
        options = Options.model_validate(given)
    except ValidationError as exc:
        errors += _lines(exc, lambda loc: (names.get(loc[0]) or _flag_of(loc)) if loc else "flags")
        return None
    errors += [f"--collector.{name}: no such collector" for name in options.collectors if name not in switches]
    if options.shard_index >= options.shard_count:
        index = str(given["shard_index"]).strip()
        shown = f"{index} (the host name's ordinal {options.shard_index})" if index == "auto" else index
        errors.append(f"{names.get('shard_index', '--shard.index')}: {shown} is not a shard of "
                      f"{options.shard_count} (shards 0 to {options.shard_count - 1}, by "
                      f"{names.get('shard_count', '--shard.count')})")
        return None
    return options


def _env_options() -> dict[str, Any]:
    """The options the environment sets (those with an `env` name), as plain strings."""
    fields: dict[str, Any] = {
        name: (str | None, Field(None, validation_alias=AliasChoices(meta(info)["env"])))
        for name, info in Options.model_fields.items() if "env" in meta(info)}
    loaded: dict[str, Any] = create_model("EnvOptions", __base__=_EnvBase, **fields)().model_dump(exclude_none=True)
    return loaded


_UNREAD = object()  # a YAML file that could not be read (its error is on the list)


def _read_yaml(config_file: Path, errors: list[str]) -> Any:
    """The YAML file as parsed ({} when empty), or _UNREAD."""
    try:
        raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        errors.append(f"--config.file: cannot read {config_file}: {exc.strerror}")
        return _UNREAD
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        errors.append(f"--config.file: {config_file}{where} is not valid YAML")
        return _UNREAD
    return raw if raw is not None else {}


def _file_options(raw: Any, config_file: Path | None, errors: list[str]) -> tuple[Any, dict[str, tuple[Any, str]]]:
    """The file without the options it sets, and those (field -> its value, and its key as the file names it).

    An option's `yaml` key is a top-level key (`metric_denylist`), or `section.key`: `shard.count`
    is `count` in the file's `shard:` mapping.
    """
    keys = {meta(info)["yaml"]: field for field, info in Options.model_fields.items() if "yaml" in meta(info)}
    tops = {k.split(".")[0] for k in keys}
    if not isinstance(raw, dict) or not tops & raw.keys():
        return raw, {}
    raw = dict(raw)
    found: dict[str, tuple[Any, str]] = {}
    for top in sorted(tops & raw.keys()):
        given = raw.pop(top)
        if top in keys:  # a key of its own
            found[keys[top]] = (given, f"{config_file}: {top}")
            continue
        names = [k.split(".", 1)[1] for k in keys if k.split(".")[0] == top]
        if not isinstance(given, dict):
            errors.append(f"{config_file}: {top}: should be a mapping of {', '.join(names)}")
            continue
        errors += [f"{config_file}: {top}.{k}: Extra inputs are not permitted" for k in given if k not in names]
        found |= {keys[f"{top}.{k}"]: (v, f"{config_file}: {top}.{k}") for k, v in given.items() if k in names}
    return raw, found


def _file_config(raw: Any, config_file: Path, switches: Mapping[str, bool], errors: list[str]) -> FileConfig | None:
    """The YAML file (None when it is unreadable or bad: its lines are in `errors`)."""
    if raw is _UNREAD:
        return None
    try:
        return FileConfig.model_validate(raw, context={"areas": tuple(switches)})
    except ValidationError as exc:
        errors += _lines(exc, lambda loc: f"{config_file}: {_loc(loc) or 'file'}")
        return None


def _env_target(targets: list[Target], config_file: Path | None, errors: list[str]) -> None:
    """Add the target the OMS_* environment defines, if any, to `targets`."""
    data = env_target()
    if data is None:
        return
    try:
        from_env = Target.model_validate(data)
    except ValidationError as exc:
        errors += _lines(exc, lambda loc: _env_name(str(loc[0])) if loc else "OMS_* environment")
        return
    if any(t.name == from_env.name for t in targets):
        errors.append(f"OMS_TARGET_NAME: target name {from_env.name!r} is also in {config_file}")
    elif any(t.project_id == from_env.project_id for t in targets):
        errors.append(f"OMS_PROJECT_ID: project {from_env.project_id} is also in {config_file}")
    else:
        targets.append(from_env)


def _env_name(field: str) -> str:
    return meta(Target.model_fields[field]).get("env", field) if field in Target.model_fields else field


def _flag_name(field: str) -> str:
    return meta(Options.model_fields[field]).get("flag", field) if field in Options.model_fields else field


def _flag_of(loc: tuple[Any, ...]) -> str:
    """The flag a validation error of Options is about: `--oms.page-limit`, `--collector.task-groups`."""
    if loc[0] == "collectors" and len(loc) > 1:
        return "--collector." + str(loc[1]).replace("_", "-")
    return "--" + _flag_name(str(loc[0]))
