"""``policystack daemon``: run a checkpoint on a robot through the control daemon, or read its
telemetry.

    policystack daemon run robot=sim checkpoint=DIR task=Reach episodes=20 rate=500 record=DIR
    policystack daemon status [telemetry=tcp://127.0.0.1:5557] [timeout=5] [server_key=F] [client_key=F]
    policystack daemon keys DIR [name=server]
    policystack daemon stop [commands=tcp://127.0.0.1:5556] [server_key=F] [client_key=F]
    policystack daemon end-episode [commands=tcp://127.0.0.1:5556] [server_key=F] [client_key=F]

``run`` keys: robot (config name or YAML path), checkpoint (omit to wait for a remote worker:
``python -m policystack.robot.worker --connect tcp://HOST:PORT``), task (sim: the suite task name; a
real robot, e.g. robot=so101: the instruction, free text), instruction
(override the language instruction), episodes, max_steps, seed, rate (loop Hz), record (dataset
dir), port (obs; chunks port+1, telemetry port+2), host, cameras (comma list), image_size,
env_state (true: the sim also observes the named objects' poses, for state-based checkpoints) --
with robot=sim these three default to what the checkpoint was trained on, and a camera that would
render otherwise than the training data's (``types.check_camera_records``) is refused before the loop starts,
replan_every (policy steps between chunk requests; every step's observation is sent), import (module
registering a Policy subclass), no_rt (true: no SCHED_FIFO), lockstep (sim only, true: simulated time,
the loop steps once each chunk is in: deterministic, for checking a checkpoint against eval),
and any robot config key as ``robot.<key>=value`` (e.g. ``robot.watchdog_s=0.5``).
speech (off by default; piper, espeak or indextts): a process of its own speaks the run's events
from the telemetry (episode start and instruction, result, hold and reason, e-stop, a policy's
decision), options as ``speech.<key>=value`` (docs/interaction.md).
detector (off by default; a ``describer`` checkpoint): a process of its own judges the newest
observation and ends an episode its success detector says is done (``detector_done``; on a real robot,
where nothing else judges success), options as ``detector.<key>=value`` (threshold, consecutive,
every_s, nice, threads; docs/daemon.md). A detector that cannot load is one log line; the run goes on.
The shared token is ``$POLICYSTACK_DAEMON_TOKEN`` (a random one is made for a local worker).

``stop`` ends the running episode (``stopped``) and the run; ``end-episode`` ends the running episode
(``operator``) and the daemon goes on with the next. Both send one signed ``command`` message to the
daemon's chunk socket (its port + 1) and need the daemon's token in ``$POLICYSTACK_DAEMON_TOKEN``.

CurveZMQ encryption (docs/daemon.md, "Encryption"): ``keys`` writes a key pair as ``DIR/NAME.key``
(public) and ``DIR/NAME.key_secret`` (0600); ``run robot.transport.curve_server_secret=F``
(optionally ``robot.transport.curve_allowed_clients=DIR``) turns it on; ``status`` then needs
``server_key=`` (the server's ``.key``) and, with an allow-list, ``client_key=`` (a listed
``.key_secret``).
"""

from __future__ import annotations

import json
import os
import sys

import yaml

from policystack.keyvalue import split_key_values
from policystack.robot.config import TOKEN_ENV, load_robot_config, token_from_env

RUN_KEYS = {"robot", "checkpoint", "task", "instruction", "episodes", "max_steps", "seed", "rate", "record",
            "port", "host", "cameras", "image_size", "env_state", "replan_every", "import", "no_rt", "threads",
            "lockstep", "speech", "detector"}


def _run(argv: list[str]) -> int:
    from policystack.robot.supervisor import DaemonConfig, DaemonError, Supervisor

    speech = [a[len("speech."):] for a in argv if a.startswith("speech.")]
    detector = [a[len("detector."):] for a in argv if a.startswith("detector.")]
    kv = split_key_values([a for a in argv if not a.startswith(("speech.", "detector."))], sorted(RUN_KEYS),
                          prefixes=("robot.",))
    overrides = {k[len("robot."):]: yaml.safe_load(v) for k, v in kv.items() if k.startswith("robot.")}
    if "rate" in kv:
        overrides["rate_hz"] = float(kv["rate"])
    robot = load_robot_config(kv.get("robot", "sim"), overrides)
    if kv.get("speech", "off") != "off":
        from policystack.interaction.announcer import AnnouncerProcess, parse_speech_args

        speech = [f"backend={kv['speech']}", f"avoid_cpu={robot.cpu}", *speech]
        speech_cfg = parse_speech_args(speech)[0]  # bad options fail here, before anything starts
    elif speech:
        raise ValueError(f"speech.{speech[0]}: speech is off; add speech=piper (or espeak, indextts)")
    if kv.get("detector"):
        from policystack.perception.watcher import parse_detector_args, start_detector_process

        detector = [f"checkpoint={kv['detector']}", f"avoid_cpu={robot.cpu}", *detector]
        parse_detector_args(detector)  # bad options fail here, before anything starts (a bad checkpoint: its process says so)
    elif detector:
        raise ValueError(f"detector.{detector[0]}: the detector is off; add detector=DIR (a describer checkpoint)")
    token = token_from_env(required=False)
    if token is None:
        if "checkpoint" not in kv:
            raise KeyError(f"a remote worker needs the shared token: set ${TOKEN_ENV} on both hosts")
        token = os.urandom(24).hex().encode()
    # a local checkpoint decides what the sim's cameras make unless the command line says otherwise
    policy_features, derived = None, {}
    if "checkpoint" in kv:
        from policystack.policies.files import read_checkpoint_meta

        _, policy_features = read_checkpoint_meta(kv["checkpoint"])
        if robot.driver == "sim":
            from policystack.eval.envs import env_kwargs_from_features

            derived = env_kwargs_from_features(kv.get("task", "Reach"), policy_features)
    cfg = DaemonConfig(
        robot=robot, token=token, checkpoint=kv.get("checkpoint"), task=kv.get("task", "Reach"),
        instruction=kv.get("instruction"), episodes=int(kv.get("episodes", 1)),
        max_steps=int(kv["max_steps"]) if "max_steps" in kv else None, seed=int(kv.get("seed", 0)),
        record=kv.get("record"), host=kv.get("host", "127.0.0.1"), port=int(kv.get("port", 5555)),
        cameras=(tuple(c for c in kv["cameras"].split(",") if c) if "cameras" in kv
                 else tuple(derived.get("cameras", ("front",)))),
        image_size=int(kv["image_size"]) if "image_size" in kv else int(derived.get("image_size", 96)),
        env_state=(str(kv["env_state"]).lower() in ("1", "true", "yes") if "env_state" in kv
                   else bool(derived.get("env_state", False))),
        policy_features=policy_features,
        replan_every=int(kv["replan_every"]) if "replan_every" in kv else None,
        worker_imports=tuple(m for m in kv.get("import", "").split(",") if m),
        worker_threads=int(kv.get("threads", 1)),
        no_rt=str(kv.get("no_rt", "false")).lower() in ("1", "true", "yes"),
        lockstep=str(kv.get("lockstep", "false")).lower() in ("1", "true", "yes"))
    sup = Supervisor(cfg)
    print(json.dumps({"telemetry": sup.addrs["telemetry"], "obs": sup.addrs["obs"], "commands": sup.addrs["chunks"]}),
          flush=True)
    announcer = AnnouncerProcess(sup.addrs["telemetry"], token, speech, sup.log, sup.channels.curve, sup.allow_list) \
        if speech else None
    judge = start_detector_process(sup.addrs["obs"], sup.addrs["chunks"], token, detector, sup.log,
                                   sup.channels.curve, sup.allow_list) if kv.get("detector") else None
    try:
        results = sup.run()
    except DaemonError as e:
        print(f"policystack daemon: {e}", file=sys.stderr)
        return 1
    finally:
        if announcer is not None:
            announcer.stop(speech_cfg.drain_s + 5.0)
        if judge is not None:
            judge.stop()
    n = len(results)
    k = sum(r.success for r in results)
    judged = n > 0 and sup.judges_success  # a real robot has no success check: not judged
    lat = sorted(sup.latencies)
    from policystack.eval.metrics import wilson_interval

    summary = {"episodes": n, "successes": k if sup.judges_success else None,
               "success_rate": k / n if judged else None,
               "success_wilson95": list(wilson_interval(k, n)) if judged else None,
               "results": [r.__dict__ for r in results],
               "obs_to_chunk_ms_p50": round(lat[len(lat) // 2] * 1e3, 2) if lat else None,
               "rejected_messages": sup.dec.rejected}
    print(json.dumps(summary), flush=True)
    return 0


def _client(argv: list[str], kind: int, addr_key: str, default_addr: str):
    """An operator's socket to a running daemon from ``ADDR_KEY=... timeout= server_key= client_key=``:
    (context, socket of ``kind`` with curve applied when keys are given, address, timeout s, token, curve)."""
    import zmq

    from policystack.robot.curve import ClientCurve

    kv = split_key_values(argv, (addr_key, "timeout", "server_key", "client_key"))
    token = token_from_env(required=True)
    curve = ClientCurve.resolve(kv.get("server_key"), kv.get("client_key"))
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    if curve is not None:
        curve.apply(sock)
    return ctx, sock, kv.get(addr_key, default_addr), float(kv.get("timeout", 5)), token, curve


def _status(argv: list[str]) -> int:
    import zmq

    from policystack.robot.transport import Decoder

    ctx, sub, addr, timeout, token, curve = _client(argv, zmq.SUB, "telemetry", "tcp://127.0.0.1:5557")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
    sub.connect(addr)
    dec = Decoder(token, max_bytes=1 << 20, kinds=("telemetry",))
    try:
        if not sub.poll(int(timeout * 1000)):
            hint = ("right server_key? with an allow-list, a listed client_key?" if curve is not None
                    else "does the daemon use curve? then give server_key=")
            print(f"policystack daemon status: no telemetry from {addr} within {timeout} s "
                  f"(is the daemon running? right port? {hint})", file=sys.stderr)
            return 1
        msg, why = dec.decode(sub.recv())
        if msg is None:
            print(f"policystack daemon status: telemetry rejected: {why}", file=sys.stderr)
            return 1
        print(json.dumps(json.loads(msg.body["status"]), indent=2))
        return 0
    finally:
        sub.close(0)
        ctx.term()


def _command(op: str, argv: list[str]) -> int:
    """Send the operator command ``op`` ("stop" / "end_episode") to a running daemon."""
    import zmq

    from policystack.robot.transport import Encoder

    ctx, push, addr, timeout, token, curve = _client(argv, zmq.PUSH, "commands", "tcp://127.0.0.1:5556")
    push.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a finished connection: no daemon -> zmq.Again
    push.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    push.setsockopt(zmq.LINGER, int(timeout * 1000))  # closing waits until the message is out
    push.connect(addr)
    try:
        push.send(Encoder(token).encode("command", op=op))
    except zmq.Again:
        print(f"policystack daemon {op.replace('_', '-')}: no daemon took the command at {addr} within "
              f"{timeout} s (is it running? right port: the daemon's port + 1?)", file=sys.stderr)
        return 1
    finally:
        push.close()
        ctx.term()
    print(json.dumps({"sent": op, "to": addr}))
    return 0


def _keys(argv: list[str]) -> int:
    from policystack.robot.curve import write_key_pair

    if not argv or "=" in argv[0]:
        raise ValueError("usage: policystack daemon keys DIR [name=server]")
    kv = split_key_values(argv[1:], ("name",))
    public, secret = write_key_pair(argv[0], kv.get("name", "server"))
    print(json.dumps({"public": str(public), "secret": str(secret)}))
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    sub, rest = argv[0], argv[1:]
    try:
        if sub == "run":
            return _run(rest)
        if sub == "status":
            return _status(rest)
        if sub == "keys":
            return _keys(rest)
        if sub in ("stop", "end-episode"):
            return _command(sub.replace("-", "_"), rest)
        if sub == "worker":
            from policystack.robot.worker import main as worker_main

            return worker_main(rest)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"policystack daemon {sub}: {e}", file=sys.stderr)
        return 2
    print(f"policystack daemon: unknown subcommand {sub!r}; valid: run, status, keys, worker, stop, "
          "end-episode", file=sys.stderr)
    return 2
