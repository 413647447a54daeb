"""pipelines.yaml's checks that are not its models: reading the YAML, and wording the errors.

Split from config.py, which holds the models. A mistake in the file is the first thing a user sees,
so each message names the file, the pipeline and the field (and the line, for a key given twice),
suggests the close spelling of an unknown key, and never repeats a string value back (it could be
a secret pasted where an env var name belongs).
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError


class ConfigError(ValueError):
    """pipelines.yaml is wrong; the message names the file, the pipeline and the field."""


# Dates a pipeline may name. Mixpanel started in 2009 (no project holds older events); the end keeps
# date arithmetic (the day after to_date, N months before `created`) far from date.max, and is fixed
# rather than counted from today so that a file valid today stays valid.
EARLIEST_DATE = dt.date(2008, 1, 1)
LATEST_DATE = dt.date(2099, 12, 31)
_LOOPBACK_HOSTS = {"localhost"}


def sane_date(value: dt.date) -> dt.date:
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise ValueError(f"{value} is outside {EARLIEST_DATE}..{LATEST_DATE} (Mixpanel holds no older events; "
                         "a later one is a typo)")
    return value


Date = Annotated[dt.date, AfterValidator(sane_date)]


def api_url(value: str | None) -> str | None:
    """https only: the service account's secret travels as Basic auth. Plain http is for a local
    server (a test double, a proxy on this machine), where nothing crosses a network."""
    if value is None:
        return None
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in value):
        # The value is not repeated: a URL can carry credentials (ftp://user:secret@host).
        scheme = f" (it starts with {parts.scheme}://)" if parts.scheme.isalnum() else ""
        raise ValueError(f"not an https:// URL such as https://data-eu.mixpanel.com{scheme}")
    if parts.username is not None or parts.password or parts.query or parts.fragment:
        raise ValueError("give the URL without credentials, query or fragment (credentials come from the env vars "
                         "named in credentials)")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(f"plain http:// to {host} would send the service account's secret unencrypted; "
                         "use https:// (http:// is accepted only for localhost, 127.0.0.1 and ::1)")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in _LOOPBACK_HOSTS


def read_yaml_file(path: Path, what: str):
    """A YAML file's document; a missing file, bad YAML or a key given twice is a ConfigError naming
    the file and `what` it is."""
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found ({what})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    check_duplicate_keys(path, text)
    return document


def check_duplicate_keys(path: Path, text: str | None = None) -> None:
    """YAML keeps the last of two equal keys in a mapping without a word, so a pasted block silently
    overrides the one above it (a second `path:`, a second `from_date:`): refuse it, naming the line."""
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return  # reported by whoever reads the file
    for node in nodes:
        for loc, key, first, again in _repeated_keys(node, ()):
            document = yaml.safe_load(yaml.serialize(node, Dumper=yaml.SafeDumper))
            if loc[:1] == ("attributes",) and isinstance(document, dict):  # a component's defs.yaml
                loc, document = loc[1:], document.get("attributes")
            where = _location(list(loc), document if isinstance(document, dict) else {})
            raise ConfigError(f"{path}: {where}: {key!r} is given twice in one mapping, on lines {first} and {again} "
                              "(YAML would silently keep the last); remove one")


def _repeated_keys(node: yaml.Node, loc: tuple):
    """(location of the key, key, first line, repeated line) for each key given twice in a mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    yield (*loc, key), key, seen[key], line
                seen.setdefault(key, line)
            yield from _repeated_keys(value_node, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _repeated_keys(item, (*loc, index))


def describe_validation_error(exc: ValidationError, raw: dict, source: str, root: type[BaseModel]) -> str:
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = _location(loc, raw)
        message = error["msg"].removeprefix("Value error, ").replace("a valid tuple", "a list")
        if error["type"] == "extra_forbidden":
            message = ("unknown field" + _did_you_mean(loc, root)
                       + " (check the spelling against the configuration reference, docs/configuration.md)")
        elif error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] in _TYPE_ERRORS and isinstance(error.get("input"), str):
            message += ", not a string (write it without quotes)"  # not repeated: it could be a pasted secret
        elif error["type"] in _TYPE_ERRORS:
            message += f", not {_yaml_text(error['input'])}"
        lines.append(f"{source}: {where}: {message}")
    return "\n".join(lines)


def _location(loc: list, raw: dict) -> str:
    """Turn pydantic's ('pipelines', 2, 'destination', 'local', 'path') into a readable place."""
    parts: list[str] = []
    if loc[:1] == ["pipelines"] and len(loc) > 1 and isinstance(loc[1], int):
        index = loc[1]
        try:
            name = raw["pipelines"][index].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = None
        parts.append(f"pipeline {name!r}" if name else f"pipeline #{index + 1}")
        loc = loc[2:]
    # Drop discriminator tags pydantic inserts for tagged unions (e.g. 'local', 'demo').
    fields = [str(p) for p in loc if not (isinstance(p, str) and p in _UNION_TAGS)]
    if fields:
        parts.append("field " + ".".join(fields))
    return ", ".join(parts) or "top level"


_UNION_TAGS = {"mixpanel", "local", "demo", "duckdb", "s3", "gcs", "azure", "bigquery", "snowflake", "redshift"}
_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "int_parsing", "float_parsing", "bool_parsing"}


def _yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _did_you_mean(loc: list, root: type[BaseModel]) -> str:
    """`; did you mean 'frequency'?` for a misspelt key, from the fields of the model it sits in."""
    model: Any = root
    for part in loc[:-1]:
        model = _field_model(model, part)
        if model is None:
            return ""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    names = [info.alias or name for name, info in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _field_model(model: Any, part: Any) -> Any:
    """The model one step down `loc`: a field's model, a tuple's item, a tagged union's member."""
    if isinstance(part, int):
        return model
    if isinstance(model, type) and issubclass(model, BaseModel):
        info = next((i for n, i in model.model_fields.items() if part in (n, i.alias)), None)
        if info is not None:
            return _unwrap(info.annotation)
    for member in getattr(model, "__args__", ()):  # tagged union: pydantic puts the tag in `loc`
        fields = getattr(member, "model_fields", {})
        if "type" in fields and getattr(fields["type"].annotation, "__args__", ()) == (part,):
            return member
    return None


def _unwrap(annotation: Any) -> Any:
    """tuple[X, ...], X | None and Annotated[X, ...] down to X (or the union of tagged members)."""
    while True:
        args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None) and a is not Ellipsis]
        if getattr(annotation, "__metadata__", None) is not None:  # Annotated
            annotation = annotation.__origin__
        elif len(args) == 1:
            annotation = args[0]
        else:
            return annotation
