"""The control daemon: a fixed-rate control loop process (interpolation, safety filter, driver),
a policy worker process (local or remote) and a supervisor; see docs/daemon.md."""
