"""Test-suite plugins: ``realtime`` tests measured against the machine's starvation (tests/realtime.py), and
pytester to test that plugin."""

pytest_plugins = ["tests.realtime", "pytester"]
