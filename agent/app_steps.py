"""The app role's part of a run around its containers: the files they mount, the steps the
plan runs between them (prove or rotate the database password, write app.env, reload the
HTTPS proxy, restore a backup), the backup before an upgrade that migrates the schema, and
what the operator is told once the app is up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from agent import backup, history, proxy, relay, release, tls
from agent.app_setup import check_db_password, write_env_file, write_init_script
from agent.config import AppSettings, BackupSettings
from agent.engine import Engine
from agent.inputs import Inputs, app_values
from agent.reconcile import Plan, Step, wait_ready
from agent.roles import app
from agent.rollout import Extras, Rollout
from agent.secret_files import ADMIN_PASSWORD, folder
from agent.spec import Container, Spec

Say = Callable[[str], None]
INFRA = {"postgres", "redis"}


def write_files(settings: AppSettings, inputs: Inputs) -> None:
    """What the containers mount from the data dir: Postgres' init script, the relay's
    program, and with --tls the proxy's Caddyfile and the files it names."""
    write_init_script(settings)
    relay.write_files(settings.data_dir)
    if inputs.site is not None:
        proxy.write_files(settings, inputs.site)


def plan_files(settings: AppSettings, inputs: Inputs, say: Say, notes: list[str]) -> None:
    """For a plan (inside store.dry_run): every file a run would write, the steps' included;
    what a step would do besides, noted."""
    write_files(settings, inputs)
    write_env_file(settings, app.env_file(settings, app_values(settings, inputs)), say)
    if inputs.rotate_to is not None:
        notes.append("the database password would be rotated (--rotate-db-password): in "
                     "Postgres, then in secrets/")


def prepare(engine: Engine, settings: AppSettings, inputs: Inputs, spec: Spec, plan: Plan,
            record: history.Record | None, extras: Extras, say: Say) -> Rollout:
    """The files written, and the plan with the app's steps: Postgres and Redis first (the
    spec's start order); then the password is proven and the env file written; then the
    services that use them. A release change is a rollout, backed up first when it migrates
    the schema."""
    site = inputs.site
    write_files(settings, inputs)
    if site is not None and site.cert is not None:
        say(f"HTTPS with the certificate in {settings.tls_cert}: {tls.describe(site.cert)}")
    moving = tuple(c.service for c in spec.containers if c.service in release.APP_VERSIONED
                   and (o := plan.observed.get(c.name)) is not None
                   and o.image_id != inputs.image_ids[c.image])
    if moving:
        plan = dataclasses.replace(plan, keep=frozenset(release.APP_VERSIONED))
        if (extras.backup and record is not None and not record.backup
                and set(moving) & set(release.MIGRATING)):
            taken = backup_before_upgrade(engine, settings, record, say)
            record = history.update(settings.data_dir, record, backup=str(taken))
    steps = _steps(engine, settings, inputs, spec, extras, say)
    if "db-password" in steps:
        plan = plan.with_step("db-password", "prove the database password", after=INFRA)
    plan = plan.with_step("env-file", "write app.env", after={*INFRA, "db-password"})
    front = _proxy(spec)
    if front is not None:
        plan = plan.with_step("proxy-reload", "reload the HTTPS proxy's configuration",
                              after={"proxy"})
    if extras.restore is not None:
        plan = plan.with_step("restore-databases", "restore the backup's databases",
                              after={*INFRA, "db-password"})
    router = None
    if front is not None and site is not None:  # a running proxy: upgrades drop no request
        o = plan.observed.get(front.name)
        router = proxy.Router(engine, settings, site, front.name, running=(
            o is not None and o.status == "running" and plan.verb(front.name) == "unchanged"))
    return Rollout(plan, record, steps, router, moving)


def _proxy(spec: Spec) -> Container | None:
    return next((c for c in spec.containers if c.service == "proxy"), None)


def _steps(engine: Engine, settings: AppSettings, inputs: Inputs, spec: Spec, extras: Extras,
           say: Say) -> dict[str, Step]:
    """The app's own steps, by the name the plan gives them."""
    postgres = next((c for c in spec.containers if c.service == "postgres"), None)
    front = _proxy(spec)
    assert inputs.secrets is not None

    def db_password(plan: Plan) -> int:
        """Prove the database takes the password before anything uses it (rotate first,
        when asked)."""
        assert postgres is not None and inputs.secrets is not None
        if not plan.ready(postgres):
            wait_ready(engine, postgres, settings.ready_timeout, say)
        check_db_password(engine, settings, inputs.secrets, inputs.rotate_to, say)
        return 0 if inputs.rotate_to is None else 1

    def env_file(plan: Plan) -> int:
        write_env_file(settings, app.env_file(settings, app_values(settings, inputs)), say)
        return 0

    steps: dict[str, Step] = {"env-file": env_file}
    if postgres is not None:
        steps["db-password"] = db_password
    if front is not None:
        steps["proxy-reload"] = lambda plan: proxy.reload(
            engine, settings, front.name, plan.verb(front.name) != "unchanged", say)
    if extras.restore is not None:
        restore = extras.restore
        steps["restore-databases"] = lambda plan: restore()
    return steps


def backup_before_upgrade(engine: Engine, settings: AppSettings, record: history.Record,
                          say: Say) -> Path:
    """The databases as they are, before images that migrate their schema start (the backup
    command's own archive, in the data dir's backups/)."""
    say(f"release {record.name} changes the core's or the backend's image (they migrate the "
        "database's schema at start): backing up the databases first")
    wanted = {f.name for f in dataclasses.fields(BackupSettings) if f.init}
    return backup.run_backup(engine, BackupSettings(**{
        k: getattr(settings, k) for k in wanted if hasattr(settings, k)}), None, say, lock=False)


def done(engine: Engine, settings: AppSettings, inputs: Inputs, spec: Spec, say: Say) -> None:
    """Where to open the app, and where the admin's password is."""
    site, front = inputs.site, _proxy(spec)
    if site is not None and front is not None:
        say(f"the app is up: open {site.url} (the HTTPS proxy, this VM's port "
            f"{site.https_port}; port {site.http_port} redirects to it)")
        if site.mode == "internal":
            root = proxy.copy_internal_root(engine, settings, front.name,
                                            settings.ready_timeout, say)
            say(f"HTTPS by Caddy's internal CA: trust its root certificate, {root}, in the "
                "browsers and systems that open the app" if root else
                "HTTPS by Caddy's internal CA: its root certificate is not made yet; run "
                "again to copy it")
    else:
        say(f"the app is up: open {app_values(settings, inputs).frontend_url}/ (this VM, "
            f"port {settings.frontend_port})")
    say(f"admin account: {settings.admin_username}, password in "
        f"{folder(settings.data_dir) / ADMIN_PASSWORD}")
