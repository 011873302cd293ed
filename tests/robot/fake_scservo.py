"""A fake ``scservo_sdk`` (the Feetech servo SDK that LeRobot's ``FeetechMotorsBus`` drives): the
serial-bus boundary, the one place the daemon's tests fake hardware.

Implements the SDK surface LeRobot uses (PortHandler, PacketHandler read/write/ping,
GroupSyncRead/GroupSyncWrite, the byte helpers and constants) over in-memory servos: each servo
is a 256-byte little-endian register file; ``Present_Position`` (56) moves towards
``Goal_Position`` (42) by at most ``speed`` ticks per bus read while torque (40) is on.
``FakeBus.unplugged = True`` (or, across processes, the existence of ``unplug_file``) makes every
transfer time out, as a pulled cable does. With ``trace_file`` the bus keeps every Goal_Position
sync write ``(t, {id: raw})`` and writes them as JSON there when the port closes.

Install with ``install()`` (puts this module in ``sys.modules["scservo_sdk"]``), or, in a child
process such as the daemon's control loop, put ``fake_sdk`` (a ``scservo_sdk`` package that loads
this module) first on ``PYTHONPATH`` and describe the bus in ``$POLICYSTACK_FAKE_SCSERVO``
(``install_from_env``).
"""

from __future__ import annotations

import json
import os
import sys
import time

COMM_SUCCESS = 0
COMM_RX_TIMEOUT = -3001
COMM_RX_CORRUPT = -3002
BROADCAST_ID = 0xFE
MAX_ID = 0xFC
INST_PING = 1
PKT_ID, PKT_LENGTH, PKT_INSTRUCTION, PKT_ERROR = 2, 3, 4, 4
GOAL, PRESENT, TORQUE = 42, 56, 40


def SCS_LOBYTE(w):  # noqa: N802  (the SDK's names)
    return w & 0xFF


def SCS_HIBYTE(w):  # noqa: N802
    return (w >> 8) & 0xFF


def SCS_LOWORD(v):  # noqa: N802
    return v & 0xFFFF


def SCS_HIWORD(v):  # noqa: N802
    return (v >> 16) & 0xFFFF


class FakeBus:
    """Servos on one port: id -> register file."""

    def __init__(self, ids, model_number: int = 777, speed: int = 40, start: int = 2048):
        self.model_number = model_number
        self.speed = speed
        self.regs = {i: bytearray(256) for i in ids}
        for r in self.regs.values():
            r[PRESENT:PRESENT + 2] = start.to_bytes(2, "little")
            r[GOAL:GOAL + 2] = start.to_bytes(2, "little")
            r[11:13] = (4095).to_bytes(2, "little")  # Max_Position_Limit
        self.unplugged = False
        self.unplug_file: str | None = None
        self.trace_file: str | None = None
        self.trace: list[tuple[float, dict[int, int]]] = []
        self.transfers = 0

    def is_unplugged(self) -> bool:
        return self.unplugged or (self.unplug_file is not None and os.path.exists(self.unplug_file))

    def dump_trace(self) -> None:
        if self.trace_file is None:
            return
        tmp = self.trace_file + ".tmp"
        with open(tmp, "w") as fh:
            json.dump([[t, {str(k): v for k, v in goals.items()}] for t, goals in self.trace], fh)
        os.replace(tmp, self.trace_file)

    def get(self, id_: int, addr: int, n: int) -> int:
        return int.from_bytes(self.regs[id_][addr:addr + n], "little")

    def set(self, id_: int, addr: int, data) -> None:
        self.regs[id_][addr:addr + len(data)] = bytes(data)

    def physics(self) -> None:
        for i, r in self.regs.items():
            if r[TORQUE]:
                goal, pos = self.get(i, GOAL, 2), self.get(i, PRESENT, 2)
                step = max(-self.speed, min(self.speed, goal - pos))
                r[PRESENT:PRESENT + 2] = (pos + step).to_bytes(2, "little")


BUSES: dict[str, FakeBus] = {}


class PortHandler:
    def __init__(self, port: str):
        self.port_name = port
        self.is_open = False
        self.is_using = False
        self.baudrate = 1_000_000
        self.tx_time_per_byte = 0.01
        self.packet_start_time = 0.0
        self.packet_timeout = 0.0

    @property
    def bus(self) -> FakeBus:
        return BUSES[self.port_name]

    def openPort(self):  # noqa: N802
        if self.port_name not in BUSES:
            raise FileNotFoundError(f"no such serial port {self.port_name!r}")
        self.is_open = True
        return True

    def closePort(self):  # noqa: N802
        self.is_open = False
        self.bus.dump_trace()

    def clearPort(self):  # noqa: N802
        pass

    def setBaudRate(self, baudrate):  # noqa: N802
        self.baudrate = baudrate
        return True

    def getBaudRate(self):  # noqa: N802
        return self.baudrate

    def getCurrentTime(self):  # noqa: N802
        return time.monotonic() * 1000.0

    def setPacketTimeout(self, packet_length):  # noqa: N802
        pass

    def setPacketTimeoutMillis(self, msec):  # noqa: N802
        pass

    def isPacketTimeout(self):  # noqa: N802
        return True

    def readPort(self, length):  # noqa: N802
        return []


class PacketHandler:
    def __init__(self, protocol_version=0):
        self.protocol_version = protocol_version

    def getTxRxResult(self, result):  # noqa: N802
        return {COMM_SUCCESS: "[TxRxResult] Communication success!",
                COMM_RX_TIMEOUT: "[TxRxResult] There is no status packet!"}.get(result, f"[TxRxResult] {result}")

    def getRxPacketError(self, error):  # noqa: N802
        return f"[RxPacketError] {error}"

    def _ok(self, port: PortHandler, id_: int) -> bool:
        bus = port.bus
        bus.transfers += 1
        return port.is_open and not bus.is_unplugged() and id_ in bus.regs

    def ping(self, port, id_):
        if not self._ok(port, id_):
            return 0, COMM_RX_TIMEOUT, 0
        return port.bus.model_number, COMM_SUCCESS, 0

    def _read(self, port, id_, addr, n):
        if not self._ok(port, id_):
            return 0, COMM_RX_TIMEOUT, 0
        return port.bus.get(id_, addr, n), COMM_SUCCESS, 0

    def read1ByteTxRx(self, port, id_, addr):  # noqa: N802
        return self._read(port, id_, addr, 1)

    def read2ByteTxRx(self, port, id_, addr):  # noqa: N802
        return self._read(port, id_, addr, 2)

    def read4ByteTxRx(self, port, id_, addr):  # noqa: N802
        return self._read(port, id_, addr, 4)

    def writeTxRx(self, port, id_, addr, length, data):  # noqa: N802
        if not self._ok(port, id_):
            return COMM_RX_TIMEOUT, 0
        port.bus.set(id_, addr, data[:length])
        return COMM_SUCCESS, 0


class GroupSyncRead:
    def __init__(self, port, ph, start_address, data_length):
        self.port, self.ph = port, ph
        self.start_address, self.data_length = start_address, data_length
        self.ids: list[int] = []
        self.data: dict[int, bytes] = {}

    def clearParam(self):  # noqa: N802
        self.ids = []

    def addParam(self, id_):  # noqa: N802
        self.ids.append(id_)
        return True

    def txRxPacket(self):  # noqa: N802
        bus = self.port.bus
        bus.physics()
        for i in self.ids:
            if not self.ph._ok(self.port, i):
                return COMM_RX_TIMEOUT
        self.data = {i: bytes(bus.regs[i][self.start_address:self.start_address + self.data_length])
                     for i in self.ids}
        return COMM_SUCCESS

    def getData(self, id_, addr, length):  # noqa: N802
        off = addr - self.start_address
        return int.from_bytes(self.data[id_][off:off + length], "little")


class GroupSyncWrite:
    def __init__(self, port, ph, start_address, data_length):
        self.port, self.ph = port, ph
        self.start_address, self.data_length = start_address, data_length
        self.params: dict[int, list[int]] = {}

    def clearParam(self):  # noqa: N802
        self.params = {}

    def addParam(self, id_, data):  # noqa: N802
        self.params[id_] = list(data)
        return True

    def txPacket(self):  # noqa: N802
        for i, data in self.params.items():
            if not self.ph._ok(self.port, i):
                return COMM_RX_TIMEOUT
            self.port.bus.set(i, self.start_address, data[: self.data_length])
        bus = self.port.bus
        if bus.trace_file is not None and self.start_address == GOAL:
            bus.trace.append((time.monotonic(), {i: bus.get(i, GOAL, 2) for i in self.params}))
        return COMM_SUCCESS


def install() -> None:
    sys.modules["scservo_sdk"] = sys.modules[__name__]


ENV = "POLICYSTACK_FAKE_SCSERVO"


def install_from_env() -> None:
    """The bus ``$POLICYSTACK_FAKE_SCSERVO`` describes: JSON ``{port, ids, speed, unplug_file, trace_file}``."""
    spec = json.loads(os.environ[ENV])
    bus = FakeBus(ids=spec["ids"], speed=spec.get("speed", 40))
    bus.unplug_file = spec.get("unplug_file")
    bus.trace_file = spec.get("trace_file")
    BUSES[spec["port"]] = bus
