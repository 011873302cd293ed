"""Perception modules shared by the policy families: text encoders (and later image encoders, VLMs)."""
