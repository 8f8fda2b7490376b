"""``leapi-server`` / ``python -m leapi_server``: the command line, built from ``ServerConfig``'s fields.

Every flag is one field of :class:`~leapi_server.config.ServerConfig`: its name, default, help, parser,
choices and environment variable come from the field and its :class:`~leapi_server.config.Setting`, so
adding a field adds its flag. Precedence: the flag, then the environment variable, then the default.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from leapi_server.config import SETTING, ServerConfig, Setting

log = logging.getLogger("leapi_server")

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class _Option:
    """One ``ServerConfig`` field as the command line sees it."""

    field: dataclasses.Field[Any]
    setting: Setting
    flag: str
    parse: Callable[[str], Any] | None  # None: a switch (bool)
    repeatable: bool
    optional: bool  # ``X | None``

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def default(self) -> Any:
        """The default the command line applies (``MISSING``: the flag must be given)."""
        if self.setting.cli_default is not None:
            return self.setting.cli_default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        if self.field.default is dataclasses.MISSING and self.repeatable:
            return ()
        return self.field.default


def _flag_name(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


def _options(config_type: type[ServerConfig]) -> list[_Option]:
    hints = typing.get_type_hints(config_type)
    options = []
    for config_field in dataclasses.fields(config_type):
        setting = config_field.metadata.get(SETTING, Setting())
        kind = hints[config_field.name]
        args = typing.get_args(kind)
        optional = isinstance(kind, types.UnionType) and type(None) in args
        if optional:
            (kind,) = (arg for arg in args if arg is not type(None))
        repeatable = typing.get_origin(kind) is tuple and setting.parse is None
        if repeatable:
            kind = typing.get_args(kind)[0]
        parse = setting.parse or (None if kind is bool else kind)
        if parse is not None and not callable(parse):  # pragma: no cover - a field of a new kind
            raise TypeError(f"ServerConfig.{config_field.name}: give its setting a parse=")
        flag = setting.flag or _flag_name(config_field.name)
        options.append(_Option(config_field, setting, flag, parse, repeatable, optional))
    return options


def _help(option: _Option) -> str:
    parts = [option.setting.help] if option.setting.help else []
    if option.setting.env:
        parts.append(f"env {option.setting.env}")
    default = option.default
    if default is not dataclasses.MISSING and default not in (None, ()) and option.parse is not None:
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
        parts.append(f"default: {shown}")
    return "; ".join(parts).replace("%", "%%")


def build_parser(config_type: type[ServerConfig] = ServerConfig) -> argparse.ArgumentParser:
    """Every flag, in the order of ``ServerConfig``'s fields, grouped by their ``--help`` section.

    :param config_type: ``ServerConfig`` or a subclass with more fields.
    """
    parser = argparse.ArgumentParser(
        prog="leapi-server",
        description="A LEAPI-compatible image enhancement server (POST /v1/pipeline, GET /v1/pipeline/{id}, "
        "GET /v1/me/usage/).",
    )
    groups: dict[str | None, Any] = {None: parser}
    for option in _options(config_type):
        group_name = option.setting.group
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        kwargs: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS, "help": _help(option)}
        if option.parse is None:
            default_on = option.default is True
            kwargs["action"] = argparse.BooleanOptionalAction if default_on else "store_true"
        else:
            kwargs["type"] = option.parse
            kwargs["action"] = "append" if option.repeatable else "store"
            kwargs["choices"] = option.setting.choices
            kwargs["metavar"] = option.setting.metavar or (
                None if option.setting.choices else option.flag.lstrip("-").replace("-", "_").upper()
            )
        groups[group_name].add_argument(option.flag, **kwargs)
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    return parser


def _from_environment(option: _Option, environ: Mapping[str, str]) -> Any:
    """The option's value from its environment variable, or ``MISSING``."""
    text = environ.get(option.setting.env or "", "").strip()
    if not text:
        return dataclasses.MISSING
    assert option.parse is not None, "switches have no environment variable"
    parts = [part.strip() for part in text.split(",") if part.strip()] if option.repeatable else [text]
    try:
        values = tuple(option.parse(part) for part in parts)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise SystemExit(f"leapi-server: {option.setting.env}: {exc}") from None
    choices = option.setting.choices
    if choices and any(value not in choices for value in values):
        raise SystemExit(
            f"leapi-server: {option.setting.env}: {text!r} is not one of {', '.join(map(str, choices))}"
        )
    return values if option.repeatable else values[0]


def _value(option: _Option, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    given = getattr(args, option.name, dataclasses.MISSING)
    if option.optional and given == "":
        given = dataclasses.MISSING  # an empty value is no value (e.g. --webhook-secret "")
    from_env = _from_environment(option, environ)
    if option.repeatable:
        values = (
            *(() if given is dataclasses.MISSING else given),
            *(() if from_env is dataclasses.MISSING else from_env),
        )
        value: Any = tuple(dict.fromkeys(values)) or option.default
    elif given is not dataclasses.MISSING:
        value = given
    elif from_env is not dataclasses.MISSING:
        value = from_env
    else:
        value = option.default
    if value is dataclasses.MISSING or (option.setting.missing and not value):
        what = option.setting.missing or f"no {option.flag}"
        env = f" or set {option.setting.env}" if option.setting.env else ""
        raise SystemExit(f"leapi-server: {what}: pass {option.flag}{env}")
    return value.resolve() if isinstance(value, Path) else value


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str], config_type: type[ServerConfig] = ServerConfig
) -> ServerConfig:
    """The configuration from parsed flags and the environment (flag, then variable, then default)."""
    return config_type(**{option.name: _value(option, args, environ) for option in _options(config_type)})


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args, os.environ)
    # Imported late: --help and argument errors stay fast and don't need the server extra.
    from leapi_server.server import serve

    with contextlib.suppress(KeyboardInterrupt):
        serve(config, log_level=args.log_level)
    sys.exit(0)


if __name__ == "__main__":
    main()
