"""Helpers shared by the test suites and the benchmarks (bench/ imports them, never the reverse).

One copy of each, in a module named for what it does:

- `constants`: REPO, TEST_LABEL, NOFILE;
- `engine`: a Docker client that answers (the `docker_client` fixture's, and bench's); tar;
- `sandbox`: Sandbox, one test's engine objects and their removal;
- `agent_cli`: the agent's CLI in a subprocess (run_agent, agent_cmd, agent_env);
- `ports`: free_port;
- `engine_calls`: CallCounter and call_kind, counting a client's requests to the engine;
- `certs`: a CA and certificates of a test's own (cryptography);
- `releases`: releases A and B of an image, built on this engine;
- `vms`: the simulated VMs (Docker-in-Docker), their network and registry, files into them;
- `fake_cluster`: a `launcher-config` file as a config for Ray's fake multi-node provider;
- `kills`: the SIGKILL rounds' seed, kill points and whether each kill landed;
- `processes`: default signal dispositions for every child, long-lived children in a process
  group of their own, killed with it (started, spawn, kill_group);
- `summary`: lines for the run's terminal summary (a random seed, the Pythons a test ran on).

Nothing here imports pytest: the benchmarks run without it.
"""
