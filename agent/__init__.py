"""syntho-agent: stands up a Syntho deployment (Ray head, workers, the app) on plain VMs."""

__version__ = "0.1.0"
