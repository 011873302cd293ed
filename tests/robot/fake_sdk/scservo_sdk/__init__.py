"""Stands in for the Feetech SDK in a child process of the tests (the daemon's control loop): with
``tests/robot/fake_sdk`` first on ``PYTHONPATH``, LeRobot's ``import scservo_sdk`` gets
``fake_scservo`` with the bus that ``$POLICYSTACK_FAKE_SCSERVO`` describes."""

import sys

import fake_scservo

fake_scservo.install_from_env()
sys.modules[__name__] = fake_scservo
