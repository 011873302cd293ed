"""policystack: train robot policies from demonstrations, evaluate them in MuJoCo, deploy them."""

__version__ = "0.1.0"
