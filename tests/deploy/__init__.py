"""Tests of the deployment recipes under ``deploy/`` (real processes on loopback)."""
