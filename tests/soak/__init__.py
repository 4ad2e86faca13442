"""The chaos soak: four simulated VMs running every role with --watch, faults injected at
random, and an independent checker of what must never happen (docs/soak.md)."""
