"""Scheduling: requests and their lifecycle, KV block accounting, and the continuous-batching scheduler."""
