"""Fuzz the CLI with values of the wrong kind.

Every command (head, worker, app, launcher-config, status, down, logs, install ROLE) runs with
1-3 options drawn from its settings type's option table (`HeadSettings.options()` ...), each
given a value its parser must refuse: from a table of bad values keyed by the parser, or random
junk (quotes, `$`, line breaks, control characters, unicode, 5000 characters) the parser
refuses. Each value goes through the flag, the SYNTHO_AGENT_* variable or a key of a YAML
config file (--config). Options whose parser takes any text (`str`, `Path`) ride along with
junk, secrets among them; some cases give --config a bad file instead.

Whatever the case, the agent must refuse it before anything starts (DOCKER_HOST points at a
closed port), the way README promises: exit 2, nothing on stdout, no traceback, and exactly one
printable line on stderr, `syntho-agent: error: Invalid value for SOURCE: MESSAGE`, where
SOURCE is where one of the bad values came from (the flag, the env variable, the file's key and
line) and MESSAGE is that option's parser's own message; a secret's value never shows.

The seed is printed and named in every failure: replay with SYNTHO_FUZZ_SEED=N (each case has
its own generator: case K of a seed stays the same while the option table does);
SYNTHO_FUZZ_CASES=N sets the number of in-process cases.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shlex
import signal
import string
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import click
import pytest
import yaml

from agent import cli, validate
from agent.config import (
    ALL_OPTIONS,
    ENV_PREFIX,
    AppSettings,
    Common,
    HeadSettings,
    LauncherSettings,
    Option,
    Settings,
    WorkerSettings,
)
from tests.support import summary
from tests.support.agent_cli import run_agent
from tests.support.constants import REPO


def _seed() -> int:
    given = os.environ.get("SYNTHO_FUZZ_SEED", "").strip()
    return int(given) if given else random.SystemRandom().randrange(2**32)


SEED = _seed()
CASES = int(os.environ.get("SYNTHO_FUZZ_CASES") or 400)  # every (command, option) pair twice
SUBPROCESS_CASES = 10
CASE_SECONDS = 10.0  # an in-process case still running after this has hung: a bug
DOCKER_HOST = "tcp://127.0.0.1:9"  # the discard port: nothing answers, nothing can start
ERROR = "syntho-agent: error: "

# Every command, with the settings type its options come from (status, down, logs: Common).
COMMANDS: tuple[tuple[tuple[str, ...], type[Settings]], ...] = (
    (("head",), HeadSettings),
    (("worker",), WorkerSettings),
    (("app",), AppSettings),
    (("launcher-config",), LauncherSettings),
    (("status",), Common),
    (("down",), Common),
    (("logs",), Common),
    (("install", "head"), HeadSettings),
    (("install", "worker"), WorkerSettings),
    (("install", "app"), AppSettings),
)
LENIENT = {("status",), ("down",), ("logs",)}  # accept (and ignore) the roles' config keys

# ---- values of the wrong kind --------------------------------------------------------------------

M = "{m}"  # where a secret's marker goes: a random word the output must never contain
LONG = "x" * 5000  # longer than a file name may be, and than any host, number or word
# Bad values by parser: each is wrong whatever the parser currently says about it.
BAD: dict[Callable[..., Any], tuple[str, ...]] = {
    validate.port: ("abc", "-1", "0", "70000", "1.5", "", "0x10", "80 80", " ", LONG, "8_0",
                    "\uff18\uff10"),
    validate.positive_int: ("abc", "-1", "0", "1.5", "", "0x10", "1e3", "nan", "1_000",
                            "\uff14", "1000001", "9" * 30),
    validate.nofile: ("abc", "-1", "0", "1.5", "", "65_536", "\uff16\uff15\uff15\uff13\uff16",
                      "9" * 30, str(2**31)),
    validate.seconds: ("abc", "-1", "0", "1.5", "", "6_0", "\uff16\uff10", "9" * 30),
    validate.count: ("abc", "-1", "1.5", "", "0x10", "many", "1_0", "\uff11\uff10", "9" * 30),
    validate.positive_float: ("abc", "-1", "0", "", "nan", "inf", "-inf", "1e999", "0x10",
                              "1_5", "\uff11.5", "1e7"),
    validate.wait: ("abc", "-1", "", "nan", "inf", "1e999", "0x10", "-0.5", "5s", "3_0",
                    "\uff13\uff10", "1e300"),
    validate.size: ("4xb", "-1gb", "0", "", "gb", "4 g b", "nan", "1e3", "9" * 400, "0.1b"),
    validate.image: ("Bad Image", "UPPER/x", "", "x:", ":tag", "a//b", "-x", "x@sha256:zz",
                     "x y:1"),
    validate.host: ("10.0.0.300", "a b", "::1::", "", "-bad", "a..b", "1.2.3", LONG),
    validate.ip: ("10.0.0.300", "a b", "::1::", "", "localhost", "1.2.3", "1.2.3.4/24"),
    validate.host_port: ("a b", "h:abc", "h:70000", "::1::", "", ":80", "h:0", "h:-1"),
    validate.address_port: ("127.0.0.1", "a:80", "127.0.0.1:abc", "127.0.0.1:70000", "",
                            ":5432", "10.0.0.300:1"),
    validate.registry: ("a b", "reg.example/path", "r:abc", "", "r:70000", "http://r"),
    validate.existing_file: ("does/not/exist", ".", LONG, "no\nsuch", "no\tsuch\x1b"),
    validate.existing_path: ("does/not/exist", LONG, "no\nsuch", "no\u2028such"),
    validate.user_file: ("~/does-not-exist-zq", "~no-such-user-zq/key", ".", LONG, "no\nsuch"),
    validate.protocol: ("ftp", "HTTP", "", "https ", "http://"),
    validate.word: ("", "a b", " ", "tab\there", "new\nline"),
    validate.email: ("0x1F", "no-at", "a@b@c", "", "a b@c"),
    validate.provider: ("AWS", "openstack", "", "local "),
    validate.name: ("", "UPPER", "-x", "a b", "x" * 40, "é"),
    validate.instance: ("UPPER", "-x", "a b", "x" * 40, "a/b"),  # "" is valid: no instance
    validate.network: ("UPPER", "-x", "", "a b", "Host"),
    # secrets: each value carries the marker, so that an echo shows
    validate.token: (M, f"{M} {M}{M}", f" {M}\t{M}{M} ", f"{M}\n{M}", ""),
    validate.password: (M, "", f"{M}{M}\n", f"{M}\n{M}{M}"),
    validate.postgres_url: ("http://x", f"http://u:{M}@x", f"postgresql://u:{M}@",
                            "postgresql://", f"postgres://u:{M}@h:99999", f"postgresql://{M}@[::1",
                            f"postgresql://u:{M}@h:abc", f"postgresql://u:{M}@[{M}]/db", M, ""),
    validate.redis_url: ("http://x", "redis://", f"redis://:{M}@", f"redis://:{M}@h:abc",
                         f"rediss://:{M}@h", f"redis://:{M}@[{M}]", M, ""),
}
SWITCH_BAD = ("maybe", "2", "yes please", "tru", "", "  ", "on off", "0x1")
FREE_TEXT: tuple[Callable[..., Any], ...] = (str, Path)  # any text is a value
PIECES = ("'", '"', "$", "$(id)", "${HOME}", "`", "\\", "\n", "\r", "\t", " ", "\x00", "\x1b[31m",
          "\x07", "\x7f", "é", "中", "✓", "\u200b", "\u202e", "\u2028", "\x85", "\U0001f600",
          "%s", "{}", "--", "-", "~", "*", ":", "/", "@", ";", "#", "&", "|", "<", ">", ",", "[",
          "]", "null", "yes", "012", "0x1F", "1e999", "nan", "-1", "!!binary", "&a", "*a")
ALNUM = string.ascii_letters + string.digits


def junk(rng: random.Random) -> str:
    if rng.random() < 0.03:
        return rng.choice(PIECES) * rng.choice((300, 5000))
    return "".join(rng.choice(PIECES) if rng.random() < 0.6 else rng.choice(ALNUM)
                   for _ in range(rng.randint(0, 8)))


def refusal(parse: Callable[..., Any], value: str) -> tuple[bool, str | None]:
    """Whether the parser refuses the value, and its message (None: no message we know: it
    crashed, which the CLI must turn into one line anyway)."""
    try:
        parse(value)
    except (ValueError, TypeError) as exc:
        return True, str(exc)
    except Exception:
        return True, None
    return False, None


def bad_value(rng: random.Random, o: Option, marker: str) -> str | None:
    """A value o's parser must refuse (None when it takes any text)."""
    parse = o.opt.parse
    if parse is None:
        return rng.choice(SWITCH_BAD)
    table = BAD.get(parse, ())
    if table and rng.random() < 0.7:
        return rng.choice(table).replace(M, marker)
    for _ in range(40):
        value = junk(rng) + (marker if o.opt.secret else "")
        if refusal(parse, value)[0]:
            return value
    return rng.choice(table).replace(M, marker) if table else None


def fuzzable(settings: type[Settings]) -> list[Option]:
    return [o for o in settings.options() if o.opt.parse not in FREE_TEXT]


# ---- a case --------------------------------------------------------------------------------------

@dataclass
class Case:
    number: int
    command: tuple[str, ...]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    config: str | None = None  # the config file's text, for the report
    expected: list[tuple[str, str | None]] = field(default_factory=list)  # (SOURCE, MESSAGE)
    markers: list[str] = field(default_factory=list)  # must never show
    ways: list[str] = field(default_factory=list)  # how each value went in (for the summary)

    def replay(self) -> str:
        """The case as a command line (long values abbreviated: the seed replays them)."""
        env = " ".join(f"{k}={_brief(v)}" for k, v in self.env.items() if k != "DOCKER_HOST")
        text = f"\n    config file: {_brief(self.config, 600)}" if self.config is not None else ""
        return (f"case {self.number} of SYNTHO_FUZZ_SEED={SEED}: {env + ' ' if env else ''}"
                f"syntho-agent {' '.join(_brief(a) for a in self.argv)}{text}")


def _brief(text: str, limit: int = 120) -> str:
    quoted = shlex.quote(text) if text.isprintable() else repr(text)
    return quoted if len(quoted) <= limit else f"{quoted[:limit // 2]}...({len(text)} characters)"


def _ways(o: Option, value: str, in_subprocess: bool) -> list[str]:
    ways = ["env", "config"] if o.flag else ["flag", "env", "config"]
    if "\x00" in value:  # neither an env variable nor (for a real process) an argument holds NUL
        ways = [w for w in ways if w == "config" or (w == "flag" and not in_subprocess)]
    if (o.opt.multiple and value.split() != [value]) or value == "":
        # click splits a multiple option's variable at white space and ignores an empty one
        ways = [w for w in ways if w != "env"]
    return ways


def _yaml_entry(rng: random.Random, key: str, value: str | list[str]) -> str:
    """key: value as an operator might write it: plain when it reads back as that text, else
    quoted by PyYAML."""
    if isinstance(value, str) and rng.random() < 0.5:
        plain = f"{key}: {value}\n"
        if _reads_back(plain, key, value):
            return plain
    # PyYAML's own choice of quoting, else (it mis-writes some line breaks) escaped in "..."
    allow_unicode = rng.random() < 0.5
    for style in (None, '"'):
        quoted: str = yaml.safe_dump({key: value}, width=2**30, default_style=style,
                                     allow_unicode=allow_unicode and style is None)
        if _reads_back(quoted, key, value):
            return quoted
    raise AssertionError(f"the fuzz cannot write {value!r} in YAML")


def _reads_back(text: str, key: str, value: str | list[str]) -> bool:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):  # junk like [[[[... is no plain text
        return False
    if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
        return False
    knode, vnode = node.value[0]
    if knode.value != key:
        return False
    if isinstance(value, list):
        return isinstance(vnode, yaml.SequenceNode) and [n.value for n in vnode.value] == value
    return (isinstance(vnode, yaml.ScalarNode) and vnode.value == value
            and not (vnode.style is None and value in ("", "~", "null", "Null", "NULL")))


def _line_of(text: str, key: str) -> int:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(node, yaml.MappingNode)
    return next(int(k.start_mark.line) + 1 for k, _ in node.value if k.value == key)


def _shown(path: Path) -> str:
    """A path as a one-line message shows it: as is, or quoted when it is not printable."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _bad_config(rng: random.Random, case: Case, settings: type[Settings], tmp: Path,
                in_subprocess: bool) -> None:
    """--config given a file (or a path) it must refuse."""
    opts = settings.options()
    k = rng.choice(opts).name
    single = [o.name for o in opts if not o.opt.multiple]
    multiple = [o.name for o in opts if o.opt.multiple]
    contents: dict[str, str | bytes] = {
        "invalid YAML": f"{k}: [1\n",
        "not UTF-8": b"\xff\xfe\x00\x01 x: y\n",
        "not a mapping": f"- {k}\n- b\n",
        "a scalar": "just text\n",
        "an unknown key": f"no-such-option: 1\n{k}: x\n",
        "a key twice": f"{k}: a\n{k}: b\n",
        "a mapping value": f"{k}:\n  nested: 1\n",
        "nested too deep": f"{k}: " + "[" * 600 + "]" * 600 + "\n",  # > the recursion limit
        "a list as a key": "? [a, b]\n: x\n",
        "a mapping as a key": "? {a: b}\n: x\n",
        "two documents": f"{k}: x\n---\n{k}: y\n",
        "a tab": f"\t{k}: x\n",
        "a NUL": f"{k}: a\x00b\n",
        "a list for one value": f"{rng.choice(single)}: [a, b]\n",
    }
    if multiple:
        contents["a mapping in a list"] = f"{rng.choice(multiple)}: [{{a: 1}}]\n"
    if case.command not in LENIENT:
        theirs = sorted(set(ALL_OPTIONS) - {o.key for o in opts})
        if theirs:
            contents["another command's key"] = f"{rng.choice(theirs).replace('_', '-')}: x\n"
    paths = {"missing": "missing.yaml", "a directory": ".", "a name too long": "x" * 300,
             "a line break in its name": "no\nsuch.yaml", "unprintable name": "no\x1bsuch.yaml"}
    what = rng.choice(sorted(contents) + sorted(paths))
    if what in paths:
        path = tmp / paths[what]
    else:
        path = tmp / f"bad-config-{case.number}.yaml"
        body = contents[what]
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body)
        case.config = body if isinstance(body, str) else repr(body)
    if rng.random() < 0.5:
        case.argv += ["--config", str(path)]
        case.expected.append(("--config", None))
        case.ways.append("bad --config")
    else:
        case.env[ENV_PREFIX + "CONFIG"] = str(path)
        case.expected.append((ENV_PREFIX + "CONFIG", None))
        case.ways.append("bad SYNTHO_AGENT_CONFIG")


def make_case(number: int, command: tuple[str, ...], settings: type[Settings],
              primary: Option | None, tmp: Path, in_subprocess: bool) -> Case:
    """One run: `primary` (None: a bad --config) and 0-2 more options, with wrong values."""
    rng = random.Random(f"{SEED}/{'subprocess' if in_subprocess else 'in-process'}/{number}")
    case = Case(number, command, argv=list(command))
    opts = settings.options()
    chosen: list[Option] = [] if primary is None else [primary]
    for o in rng.sample(opts, rng.randint(0, 2)):
        if o.key not in {c.key for c in chosen}:
            chosen.append(o)
    if primary is None:
        _bad_config(rng, case, settings, tmp, in_subprocess)
    config_path = tmp / f"case-{number}{rng.choice(('', ' é', '$x', '中'))}.yaml"
    entries: list[tuple[str, str | list[str]]] = []
    pending: list[tuple[Option, str, str, str | None]] = []  # option, raw key, value, message
    for o in chosen:
        marker = "Zq" + "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
        value = bad_value(rng, o, marker)
        passenger = value is None
        if value is None:  # any text is a value: it rides along
            value = junk(rng) + (marker if o.opt.secret else "")
        if o.opt.secret:
            case.markers.append(marker)
        ways = _ways(o, value, in_subprocess)
        if primary is None:  # the file is the bad one: the others go in another way
            ways = [w for w in ways if w != "config"]
        if not ways:
            continue
        way = rng.choice(ways)
        case.ways.append(f"{way}{' (any text)' if passenger else ''}")
        message: str | None = None
        if not passenger and o.opt.parse is not None:
            _refused, message = refusal(o.opt.parse, value)
            stripped = value.strip()
            if o.opt.secret and message and stripped and stripped in message:
                message = None  # the parser says it: the CLI must not (checked by the marker)
        if way == "flag":
            case.argv += [f"--{o.name}={value}"] if rng.random() < 0.3 else [f"--{o.name}", value]
            source = f"'--{o.name}'"
        elif way == "env":
            case.env[o.envvar] = value
            source = o.envvar
        else:
            raw = o.name if rng.random() < 0.7 else o.key
            entries.append((raw, [value] if o.opt.multiple and rng.random() < 0.5 else value))
            pending.append((o, raw, value, message))
            continue
        if not passenger:
            case.expected.append((source, message))
    if entries:
        text = "".join(_yaml_entry(rng, raw, value) for raw, value in entries)
        config_path.write_text(text)
        case.config = text
        for o, raw, _value, message in pending:
            if o.opt.parse not in FREE_TEXT:
                where = f"{_shown(config_path)} key {raw!r} at line {_line_of(text, raw)}"
                case.expected.append((where, message))
        if rng.random() < 0.5:
            case.argv += ["--config", str(config_path)]
        else:
            case.env[ENV_PREFIX + "CONFIG"] = str(config_path)
    case.argv += _required(command, {o.key for o in chosen}, settings, tmp)
    case.env["DOCKER_HOST"] = DOCKER_HOST
    return case


def _required(command: tuple[str, ...], chosen: set[str], settings: type[Settings],
              tmp: Path) -> list[str]:
    """What the command needs besides the values under test, so that the failure is theirs."""
    argv: list[str] = []
    if command[0] == "install":
        argv += ["--root", str(tmp / "root"), "--no-enable"]
    if command[-1] in ("worker", "app") and "head" not in chosen:
        argv += ["--head", "10.0.0.4"]
    if command == ("launcher-config",):
        argv += ["--output", str(tmp / "cluster.yaml")]
        if "provider" not in chosen:
            argv += ["--provider", "local"]
    if command == ("logs",):
        argv += ["--output", str(tmp / "logs.log")]
    if "data_dir" not in chosen and any(o.key == "data_dir" for o in settings.options()):
        argv += ["--data-dir", str(tmp / "data")]
    return argv


def pairs() -> list[tuple[tuple[str, ...], type[Settings], Option]]:
    """Every command with every option of its table that has a wrong value."""
    return [(command, settings, o) for command, settings in COMMANDS for o in fuzzable(settings)]


def all_cases(count: int, tmp: Path, in_subprocess: bool) -> list[Case]:
    """`count` cases: one in 12 a bad --config (the commands in turn), the others the
    (command, option) pairs in a shuffled order, each the primary bad value of a case (so that
    enough cases cover every pair)."""
    order = pairs()
    random.Random(f"{SEED}/order/{in_subprocess}").shuffle(order)
    cases: list[Case] = []
    for number in range(count):
        if number % 12 == 11:
            command, settings = COMMANDS[number // 12 % len(COMMANDS)]
            cases.append(make_case(number, command, settings, None, tmp, in_subprocess))
        else:
            command, settings, primary = order[(number - number // 12) % len(order)]
            cases.append(make_case(number, command, settings, primary, tmp, in_subprocess))
    return cases


# ---- what every case must show -------------------------------------------------------------------

def problems(case: Case, code: int | None, out: str, err: str, crash: str | None) -> list[str]:
    found: list[str] = []
    if crash is not None:
        what = "it hung" if f"{Hung.__name__}: " in crash else "an exception escaped (a traceback)"
        found.append(f"{what}: {_traceback_brief(crash)}")
        return found  # the rest follows from it
    if code != 2:
        found.append(f"exit {code}, not 2 (bad input)" + (
            ": a bad value was taken" if code in (0, 3) else ""))
    if out:
        found.append(f"something on stdout: {_brief(out, 500)}")
    line = err[:-1] if err.endswith("\n") else err
    if not err.endswith("\n") or len(err.splitlines()) != 1:
        found.append(f"stderr is not one line: {_brief(err, 1500)}")
    elif not line.isprintable():
        found.append(f"stderr has unprintable characters: {_brief(line, 1500)}")
    elif not line.startswith(ERROR):
        found.append(f"stderr does not start with {ERROR!r}: {_brief(line, 1500)}")
    elif not any(line == f"{ERROR}Invalid value for {source}: {message}" if message is not None
                 else line.startswith(f"{ERROR}Invalid value for {source}: ")
                 for source, message in case.expected):
        found.append(f"the line does not name a bad value's source with its parser's message: "
                     f"{_brief(line, 1500)}; expected one of {_brief(repr(case.expected), 1500)}")
    for marker in case.markers:
        if marker in out or marker in err:
            found.append(f"a secret's value ({marker!r}) shows in the output: {_brief(err, 1500)}")
    return found


def _traceback_brief(text: str) -> str:
    """The exception and the innermost frames of a traceback, on one line."""
    lines = text.strip().splitlines()
    frames = [line.strip() for line in lines if line.strip().startswith('File "')]
    where = " < ".join(frame.replace(str(REPO) + "/", "") for frame in reversed(frames[-3:]))
    return f"{_brief(lines[-1], 300) if lines else '?'} at {where}"


class Hung(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_in_process(case: Case, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[int | None, str, str, str | None]:
    """agent.cli.main(argv) under the case's environment: exit code, stdout, stderr, and the
    traceback of anything but SystemExit that escaped."""
    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    crash: str | None = None
    with monkeypatch.context() as env:
        for key, value in case.env.items():
            env.setenv(key, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                with deadline(CASE_SECONDS):
                    cli.main(case.argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:
                crash = traceback.format_exc()
    return code, out.getvalue(), err.getvalue(), crash


def run_subprocess(case: Case) -> tuple[int | None, str, str, str | None]:
    """The case as a real process (run_agent: `python -m agent`, cwd: the repo)."""
    try:
        done = run_agent(*case.argv, env=case.env, timeout=CASE_SECONDS * 6)
    except subprocess.TimeoutExpired:
        return None, "", "", f"{Hung.__name__}: still running after {CASE_SECONDS * 6:.0f}s"
    crash = done.stderr if "Traceback" in done.stderr else None
    return done.returncode, done.stdout, done.stderr, crash


def report(failures: list[tuple[Case, list[str]]], total: int) -> str:
    lines = [f"{len(failures)} of {total} cases failed (SYNTHO_FUZZ_SEED={SEED} replays them):"]
    for case, found in failures[:25]:
        lines.append(f"- {case.replay()}")
        lines.extend(f"    {p}" for p in found)
    if len(failures) > 25:
        lines.append(f"... and {len(failures) - 25} more")
    return "\n".join(lines)


# ---- the tests -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _seed_in_the_summary() -> None:
    """The seed is named at the end of every run of these tests (tests/conftest.py), passing or
    failing, so CI's log says how to replay it."""
    summary.note("tests/unit/test_fuzz_cli.py", f"random seed SYNTHO_FUZZ_SEED={SEED} (replays it)")


def test_the_seed_is_taken_from_syntho_fuzz_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHO_FUZZ_SEED", " 4242 ")
    assert _seed() == 4242
    monkeypatch.delenv("SYNTHO_FUZZ_SEED")
    assert 0 <= _seed() < 2**32


def test_every_run_names_its_seed_in_the_summary() -> None:
    """In `pytest -q` (passing tests' prints hidden): the seed given, and the cases it made."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/test_fuzz_cli.py::test_every_option_of_the_table_is_a_flag_of_its_command"],
        cwd=REPO, env={**os.environ, "SYNTHO_FUZZ_SEED": "4242"}, capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("\ntests/unit/test_fuzz_cli.py: random seed SYNTHO_FUZZ_SEED=4242 (replays it)\n"
            in done.stdout), done.stdout

def test_every_option_of_the_table_is_a_flag_of_its_command() -> None:
    """The fuzz draws from the option table: every option in it must reach its command."""
    for command, settings in COMMANDS:
        group: click.Command = cli.cli
        for name in command:
            assert isinstance(group, click.Group)
            group = group.commands[name]
        params = {p.name for p in group.params}
        missing = {o.key for o in settings.options()} - params
        assert not missing, f"{command}: options of the table the CLI lacks: {missing}"


def test_wrong_values_give_one_line_and_exit_2_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    print(f"fuzz seed: SYNTHO_FUZZ_SEED={SEED}")
    monkeypatch.chdir(tmp_path)  # relative paths, and whatever a case might write, stay here
    monkeypatch.setenv("DOCKER_HOST", DOCKER_HOST)
    started = time.monotonic()
    cases = all_cases(CASES, tmp_path, in_subprocess=False)
    failures: list[tuple[Case, list[str]]] = []
    ways: Counter[str] = Counter()
    for case in cases:
        ways.update(case.ways)
        found = problems(case, *run_in_process(case, monkeypatch))
        if found:
            failures.append((case, found))
    seconds = time.monotonic() - started
    print(f"{len(cases)} cases ({len(pairs())} pairs of a command and an option) in "
          f"{seconds:.1f}s; values given by {dict(sorted(ways.items()))}")
    assert not failures, report(failures, len(cases))
    budget = 30 * max(1.0, len(cases) / 400)  # it takes 1-5 s; a minute is too slow a fuzz
    assert seconds < budget, f"{len(cases)} cases took {seconds:.0f}s (SYNTHO_FUZZ_SEED={SEED})"


def test_wrong_values_give_one_line_and_exit_2_end_to_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few cases as real processes (`python -m agent`, cwd: the repo): the same, with the
    interpreter's own error handling in the way."""
    print(f"fuzz seed: SYNTHO_FUZZ_SEED={SEED}")
    monkeypatch.chdir(REPO)  # run_agent's cwd: relative paths mean the same to the parsers
    cases = all_cases(SUBPROCESS_CASES, tmp_path, in_subprocess=True)
    with ThreadPoolExecutor(max_workers=5) as pool:  # each mostly waits for its imports
        runs = list(pool.map(run_subprocess, cases))
    failures: list[tuple[Case, list[str]]] = []
    for case, run in zip(cases, runs):
        found = problems(case, *run)
        if found:
            failures.append((case, found))
    assert not failures, report(failures, len(cases))
