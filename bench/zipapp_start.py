"""5. The zipapp: its size; its start time, cold (first extraction) and warm, for `--help` and
`status`, vs the same code run from the virtualenv; and the resident memory of `--watch` after
many events.

The zipapp is built from the working tree into a temporary folder (build.py, with the wheel
cache in dist/.wheels). It runs under the virtualenv's own base interpreter, so both sides use
the same Python; SHIV_ROOT points at a fresh folder for each cold run, at one extracted folder
for the warm runs.

The memory part: on an app stack, two watchers run side by side, the zipapp's and the
virtualenv's (the baseline), and the engine is driven through a few hundred events: every
fifth a `docker kill` of a worker container (the agent starts it again: a real heal), the
others a harmless SIGWINCH (each still a full reconcile). VmRSS is sampled from /proc.
Targets: warm start at most 1.5x the virtualenv; watch RSS under 60 MB.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, stacks
from tests.support.agent_cli import agent_cmd
from tests.support.constants import REPO

BASE_PY = getattr(sys, "_base_executable", sys.executable)  # the venv's interpreter, bare
SIZE_LIMIT = 15.0  # MB: tests/integration/test_zipapp.py LIMIT
RSS_TARGET = 60.0  # MB
NOOP_TARGETS = ("core", "core_worker", "backend", "worker", "frontend")  # Python: no SIGWINCH
HEAL_TARGETS = ("core_worker", "worker")


def build(j: common.Janitor) -> Path:
    dist = j.tmp / "dist"
    subprocess.run([common.PY, "build.py", "--dist", str(dist)], cwd=REPO, check=True,
                   capture_output=True, text=True)
    return dist / "syntho-agent"


def clean_env(shiv_root: Path, bytecode: bool = True) -> dict[str, str]:
    """The environment of a VM's shell: no steering of the zipapp or the interpreter, and
    Python caching bytecode (unless bytecode=False: PYTHONDONTWRITEBYTECODE=1, as CI sets)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHIV_", "SYNTHO_AGENT_", "PYTHONPATH", "PYTHONHOME",
                                "PYTHONDONTWRITEBYTECODE"))}
    env["SHIV_ROOT"] = str(shiv_root)
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} exited {done.returncode}: {done.stderr[-1000:]}")
    return elapsed


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeat=5)
    p.add_argument("--events", type=int, default=300, help="engine events for the RSS part")
    args = p.parse_args()
    client = common.client()
    images = common.images(client)
    times: dict[str, list[float]] = {}
    notes: list[str] = []
    with common.Janitor(client) as j:
        common.log("building the zipapp from the working tree ...")
        zipapp = build(j)
        size = zipapp.stat().st_size / 1e6
        status_args = ["status", "--instance", j.instance("st"), "--data-dir", str(j.tmp / "st")]

        def new_root(prefix: str) -> Path:
            return Path(tempfile.mkdtemp(dir=j.tmp, prefix=f"shiv-{prefix}-"))

        # Warm: extracted once, then run once more so that bytecode is cached too.
        warm_root = new_root("warm")
        for cli_args in (["--help"], status_args, ["--help"]):
            timed([BASE_PY, str(zipapp), *cli_args], clean_env(warm_root))

        for name, cli_args in (("help", ["--help"]), ("status", status_args)):
            def venv(i: int, cli_args: list[str] = cli_args, name: str = name) -> None:
                times.setdefault(f"{name}-venv", []).append(
                    timed(agent_cmd(*cli_args), clean_env(warm_root)))

            def warm(i: int, cli_args: list[str] = cli_args, name: str = name) -> None:
                times.setdefault(f"{name}-warm", []).append(
                    timed([BASE_PY, str(zipapp), *cli_args], clean_env(warm_root)))

            def cold(i: int, cli_args: list[str] = cli_args, name: str = name) -> None:
                times.setdefault(f"{name}-cold", []).append(
                    timed([BASE_PY, str(zipapp), *cli_args], clean_env(new_root("cold"))))

            common.log(f"start times of `{cli_args[0]}` ({args.repeat} runs each) ...")
            common.interleave(args.repeat, venv, warm, cold)

        # PYTHONDONTWRITEBYTECODE=1 (this CI sets it): nothing imported gets bytecode written,
        # so only what the zipapp compiled at extraction (build.py: shiv's --compile-pyc) helps.
        common.log("start times with PYTHONDONTWRITEBYTECODE=1 ...")
        nobc_root = new_root("nobc")
        timed([BASE_PY, str(zipapp), "--help"], clean_env(nobc_root, bytecode=False))

        def side(key: str, cmd: list[str], root: Path) -> Callable[[int], None]:
            def run(i: int) -> None:
                times.setdefault(key, []).append(timed(cmd, clean_env(root, bytecode=False)))
            return run

        common.interleave(
            args.repeat, side("nobc-venv", agent_cmd("--help"), nobc_root),
            side("nobc-warm", [BASE_PY, str(zipapp), "--help"], nobc_root))

        common.log("the --watch memory: an app stack, two watchers (zipapp, virtualenv) ...")
        deployment = stacks.new_app(j, images, "rss")
        logs = {kind: (j.tmp / f"watch-{kind}.log").open("w") for kind in ("zipapp", "venv")}
        watchers = {
            "zipapp": j.spawn([BASE_PY, str(zipapp), "app", *deployment.args(), "--watch"],
                              cwd=REPO, env=clean_env(warm_root),
                              stdout=logs["zipapp"], stderr=logs["zipapp"]),
            "venv": j.spawn(agent_cmd("app", *deployment.args(), "--watch"),
                            cwd=REPO, env=clean_env(warm_root),
                            stdout=logs["venv"], stderr=logs["venv"]),
        }
        for kind in watchers:
            path = j.tmp / f"watch-{kind}.log"
            common.wait_for(functools.partial(says, path, "watching"), 180,
                            f"the {kind} watcher")
        time.sleep(2)
        samples: dict[str, list[float]] = {kind: [] for kind in watchers}
        first: dict[str, float] = {kind: rss_mb(w.pid)[0] for kind, w in watchers.items()}
        heals = 0
        for k in range(args.events):
            if k % 5 == 4:
                name = deployment.name(HEAL_TARGETS[(k // 5) % len(HEAL_TARGETS)])
                client.api.kill(name, "SIGKILL")
                common.wait_for(functools.partial(is_running, client, name), 60,
                                f"{name} to be started again by a watcher")
                heals += 1
            else:
                client.api.kill(deployment.name(NOOP_TARGETS[k % len(NOOP_TARGETS)]),
                                "SIGWINCH")
                time.sleep(0.1)
            if (k + 1) % 25 == 0:
                for kind, w in watchers.items():
                    if w.poll() is not None:
                        raise RuntimeError(f"the {kind} watcher exited:\n"
                                           f"{(j.tmp / f'watch-{kind}.log').read_text()[-2000:]}")
                    samples[kind].append(rss_mb(w.pid)[0])
        for kind, w in watchers.items():  # let each drain its event backlog
            common.wait_for(functools.partial(idle, w.pid), 120,
                            f"the {kind} watcher to go idle", interval=0.1)
        final = {kind: rss_mb(w.pid) for kind, w in watchers.items()}
        for w in watchers.values():
            common.Janitor.stop(w)
        for f in logs.values():
            f.close()
        healed = (j.tmp / "watch-zipapp.log").read_text().count("healed:")

    rows = [
        common.Row("5a. zipapp file size (x86_64)", "MB", [size], "-",
                   baseline_text="-", target=f"<= {SIZE_LIMIT:.0f} MB (test_zipapp)",
                   met=size <= SIZE_LIMIT),
    ]
    for name, label in (("help", "`--help`"), ("status", "`status` (engine answers)")):
        venv_med = common.summary(times[f"{name}-venv"]).median
        warm_med = common.summary(times[f"{name}-warm"]).median
        rows.append(common.Row(f"5b. start, warm zipapp: {label}", "s", times[f"{name}-warm"],
                               "virtualenv (python -m agent)", times[f"{name}-venv"],
                               target="<= 1.5x venv", met=warm_med <= 1.5 * venv_med))
        rows.append(common.Row(f"5c. start, cold zipapp (first extraction): {label}", "s",
                               times[f"{name}-cold"], "virtualenv (python -m agent)",
                               times[f"{name}-venv"], target="(none)"))
    nobc_venv = common.summary(times["nobc-venv"]).median
    rows.append(common.Row(
        "5d. start, warm zipapp, `--help`, PYTHONDONTWRITEBYTECODE=1", "s", times["nobc-warm"],
        "virtualenv, same env", times["nobc-venv"], target="<= 1.5x venv",
        met=common.summary(times["nobc-warm"]).median <= 1.5 * nobc_venv,
        note="the bytecode the zipapp compiled when it was extracted serves every start"))
    zip_rss, zip_peak = final["zipapp"]
    venv_rss, venv_peak = final["venv"]
    rows.append(common.Row(
        f"5e. --watch RSS after {args.events} events ({heals} real heals)", "MB",
        [*samples["zipapp"], zip_rss], "the same watcher from the virtualenv",
        [*samples["venv"], venv_rss], target=f"< {RSS_TARGET:.0f} MB",
        met=zip_peak < RSS_TARGET,
        note=f"zipapp: {first['zipapp']:.1f} MB after the first converge, {zip_rss:.1f} MB "
             f"at the end, peak (VmHWM) {zip_peak:.1f} MB; virtualenv: "
             f"{first['venv']:.1f} -> {venv_rss:.1f} MB, peak {venv_peak:.1f} MB; samples "
             f"every 25 events; the zipapp's watcher logged {healed} heal line(s)"))
    notes.append(f"zipapp and virtualenv both run under {sys.version.split()[0]} (the "
                 "virtualenv's base interpreter for the zipapp)")
    common.report(rows, notes, args.json)


def is_running(client: docker.DockerClient, name: str) -> bool:
    return bool(client.api.inspect_container(name)["State"].get("Running"))


def says(path: Path, text: str) -> bool:
    return text in path.read_text()


def idle(pid: int) -> bool:
    """No CPU used by the process for half a second."""
    before = cpu_ticks(pid)
    time.sleep(0.5)
    return cpu_ticks(pid) == before


if __name__ == "__main__":
    main()
