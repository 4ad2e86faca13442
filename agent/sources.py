"""Where option values come from: flags, SYNTHO_AGENT_* env variables and the config file.

    command-line flag  >  environment variable  >  config file (--config)  >  default

`click_options` turns a settings type (agent.config) into click options; `config_option`
reads the YAML file first and hands its values to click as defaults. Every value, from any
source, is text that the option's own parser reads (a YAML `yes` or `012` stays that text),
and a bad one is refused naming where it came from: the flag, the env variable, or the file's
key and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click
import yaml

from agent.config import (
    ALL_OPTIONS,
    DEFAULT_CONFIG,
    ENV_PREFIX,
    Option,
    Settings,
    commands_taking,
)
from agent.validate import printable

_SOURCE_META = "syntho_agent.config_lines"  # ctx.meta: option key -> "FILE key 'k' at line N"


def source_hint(ctx: click.Context | None, param: click.Parameter | None) -> str | None:
    """Where a value came from, in the words an operator can act on."""
    if ctx is None or param is None or param.name is None:
        return None
    source = ctx.get_parameter_source(param.name)
    if source == click.core.ParameterSource.ENVIRONMENT:
        return ENV_PREFIX + param.name.upper()
    if source == click.core.ParameterSource.DEFAULT_MAP:
        where: dict[str, str] = ctx.meta.get(_SOURCE_META, {})
        return where.get(param.name)
    return None


class Checked(click.ParamType):
    """A click type that runs an option's parser, so flags, env and config file are alike."""

    def __init__(self, option: Option) -> None:
        self.option = option
        self.name = option.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        parse = self.option.opt.parse
        if parse is None or not isinstance(value, str):
            return value  # a default, already a value
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if self.option.opt.secret and value.strip():  # never echo the value itself
                message = message.replace(repr(value), "the value").replace(value, "***")
            raise click.BadParameter(message, ctx, param, source_hint(ctx, param)) from None


class CheckedSwitch(click.types.BoolParamType):
    """A --x/--no-x switch whose env or config-file value names its source when it is bad."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{value!r} is not a switch value (true/false, yes/no, "
                                     "on/off, 1/0)", ctx, param,
                                     source_hint(ctx, param)) from exc


def click_options(settings_type: type[Settings]) -> Callable[[Callable[..., Any]],
                                                            Callable[..., Any]]:
    """Decorate a click command with a settings type's options (env variables included)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed(settings_type.options()):
            if o.flag:
                decl = click.option(f"--{o.name}/--no-{o.name}", o.key, default=o.default,
                                    type=CheckedSwitch(), envvar=o.envvar, show_envvar=True,
                                    help=o.opt.help)
            else:
                decl = click.option(f"--{o.name}", o.key, type=Checked(o), default=o.default,
                                    multiple=o.opt.multiple, envvar=o.envvar, show_envvar=True,
                                    help=o.opt.help, show_default=_shown(o))
            fn = decl(fn)
        return fn

    return decorate


def _shown(o: Option) -> bool | str:
    if o.default in (None, "", ()) or o.opt.secret:
        return False
    return o.opt.shown or True


def _bad(path: Path, message: str) -> click.BadParameter:
    return click.BadParameter(f"{printable(path)}: {message}", param_hint="--config")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; only its composer is used (nodes keep their text and line)."""


def read_config_file(path: Path) -> dict[str, tuple[Any, int, str]]:
    """The config file as written: option key -> (text or list of texts, line, key as written).

    Scalars keep their text exactly (`yes`, `012`, `0x1F` stay strings): each option's own
    parser reads it, as it reads a flag or an env variable. A key given twice is an error.
    """
    try:
        node = yaml.compose(path.read_text(), Loader=_Loader)
    except OSError as exc:
        raise _bad(path, f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _bad(path, "is not a text file (UTF-8)") from None
    except RecursionError:  # PyYAML composes nested lists and mappings recursively
        raise _bad(path, "is not a config file: its lists or mappings nest too deep") from None
    except yaml.YAMLError as exc:
        raise _bad(path, yaml_problem(exc)) from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise _bad(path, "must be a mapping of option: value")
    values: dict[str, tuple[Any, int, str]] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise _bad(path, f"the key at line {line} is a list or a mapping, not an option name")
        raw = str(key_node.value)
        key = raw.replace("-", "_")
        if key in values:
            raise _bad(path, f"key {raw!r} is given twice (lines {values[key][1]} and {line}); "
                       "keep one")
        if isinstance(value_node, yaml.MappingNode):
            raise _bad(path, f"key {raw!r} at line {line} must be a value or a list, not a "
                       "mapping")
        if isinstance(value_node, yaml.SequenceNode):
            items = []
            for item in value_node.value:
                if not isinstance(item, yaml.ScalarNode):
                    raise _bad(path, f"key {raw!r} at line {line}: each item must be a value")
                items.append(str(item.value))
            values[key] = (items, line, raw)
        elif _is_null(value_node):
            values[key] = (None, line, raw)
        else:
            values[key] = (str(value_node.value), line, raw)
    return values


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong, where, and what it was reading then
    (`is not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'
    (while parsing a flow sequence at line 1, column 9)`)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"is not valid YAML: {' '.join(str(exc).split())}"
    problem = " ".join(str(exc.problem or "").split())
    context = " ".join(str(exc.context or "").split())
    line = f"is not valid YAML{_at(exc.problem_mark)}" + (f": {problem}" if problem else "")
    if context:
        line += f" ({context}{_at(exc.context_mark)})"
    return line


def _is_null(node: yaml.Node) -> bool:
    return (isinstance(node, yaml.ScalarNode) and node.style is None
            and node.value in ("", "~", "null", "Null", "NULL"))


def config_values(path: Path, explicit: bool, command: click.Command,
                  lenient: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's values for this command (as click's default_map) and where each came from.

    A key no command knows is an error; a key of another command is an error that names it,
    unless `lenient` (status, down, logs: one VM's file may configure several roles).
    """
    try:
        found = path.exists()
    except OSError as exc:  # a name too long for the file system, a loop of links ...
        raise _bad(path, f"cannot read it: {exc.strerror}") from None
    if not found:
        if explicit:
            raise click.BadParameter(f"{printable(path)} does not exist", param_hint="--config")
        return {}, {}
    takes = {p.name: p for p in command.params if p.name}
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, (value, line, raw) in read_config_file(path).items():
        if key not in ALL_OPTIONS:
            raise _bad(path, f"unknown key {raw!r} at line {line} (known keys: see "
                       "`syntho-agent <role> --help`)")
        param = takes.get(key)
        if param is None:
            if lenient:
                continue
            raise _bad(path, f"key {raw!r} at line {line} does not apply to `syntho-agent "
                       f"{command.name}`; it is an option of `syntho-agent "
                       f"{' | '.join(commands_taking(key))}`")
        if value is None:
            continue
        multiple = isinstance(param, click.Option) and param.multiple
        if isinstance(value, list) and not multiple:
            raise _bad(path, f"key {raw!r} at line {line} takes one value, not a list")
        values[key] = (value if isinstance(value, list) else [value]) if multiple else value
        where[key] = f"{printable(path)} key {raw!r} at line {line}"
    return values, where


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config: read first (eager), so its values become the defaults of the other options.
    A key that does not apply to this command is an error."""
    return _config_option(fn, lenient=False)


def lenient_config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config for status, down and logs: keys of the roles are accepted (and not used), so
    the role's own config file serves them too."""
    return _config_option(fn, lenient=True)


def _config_option(fn: Callable[..., Any], lenient: bool) -> Callable[..., Any]:

    def load(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        explicit = value is not None
        path = Path(value) if value is not None else DEFAULT_CONFIG
        try:
            values, where = config_values(path, explicit, ctx.command, lenient)
        except click.BadParameter as exc:  # name the variable when the path came from it
            if ctx.get_parameter_source("config") == click.core.ParameterSource.ENVIRONMENT:
                exc.param_hint = ENV_PREFIX + "CONFIG"
            raise
        ctx.default_map = {**(ctx.default_map or {}), **values}
        ctx.meta[_SOURCE_META] = where

    return click.option(
        "--config", "config", envvar=ENV_PREFIX + "CONFIG", show_envvar=True,
        is_eager=True, expose_value=False, callback=load,
        help=f"YAML config file, one key per option [default: {DEFAULT_CONFIG}]")(fn)
