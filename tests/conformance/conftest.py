"""Fixtures of the conformance suite (gpiozero mock pins for the agent's outputs)."""

from tests.edge.conftest import mock_pins

__all__ = ["mock_pins"]
