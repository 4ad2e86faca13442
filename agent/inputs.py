"""What a role run resolved before it changes anything (Inputs), and the one place each role's
Spec is built from its settings and those inputs: plain functions, no I/O.

agent/resolve.py fills an Inputs (it reads, fetches and waits); everything after it, the spec,
the plan and the readiness gates, takes these values and never reads the settings to decide
what to fetch.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import tls
from agent.config import AppSettings, HeadSettings, WorkerSettings
from agent.ray_tls import Material
from agent.roles import app, ray
from agent.spec import Spec, with_logs


@dataclass(frozen=True)
class Inputs:
    """A role run's resolved inputs. The head uses gcs_password; the app the fields after it."""

    image_ids: dict[str, str]  # reference -> image ID (a stand-in for one a plan would fetch)
    token: str | None  # the cluster's Ray token; None without token auth
    gcs_password: str | None = None  # the head's GCS Redis (GCS fault tolerance on)
    secrets: app.Secrets | None = None  # as the containers get them (a rotation's new password)
    rotate_to: str | None = None  # the new database password, when a rotation is pending
    ray_host: str = ""  # the head's address as the app's containers reach it
    site: tls.Site | None = None  # the HTTPS proxy's site (--tls), checked
    ray_tls: Material | None = None  # this node's Ray TLS files; None: Ray in plain


def head_spec(settings: HeadSettings, inputs: Inputs) -> Spec:
    return with_logs(ray.head_spec(settings, inputs.token, inputs.gcs_password, inputs.ray_tls),
                     settings.log_max_size, settings.log_max_files)


def worker_spec(settings: WorkerSettings, inputs: Inputs) -> Spec:
    return with_logs(ray.worker_spec(settings, inputs.token, inputs.ray_tls),
                     settings.log_max_size, settings.log_max_files)


def app_values(settings: AppSettings, inputs: Inputs) -> app.AppValues:
    """What the app's containers and its env file are given."""
    assert inputs.secrets is not None  # resolve_app fills them
    return app.app_values(settings, inputs.secrets, inputs.ray_host, inputs.site,
                          inputs.ray_tls)


def app_spec(settings: AppSettings, inputs: Inputs) -> Spec:
    return with_logs(app.app_spec(settings, app_values(settings, inputs)),
                     settings.log_max_size, settings.log_max_files)
