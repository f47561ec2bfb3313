"""The engine as a process: its messages, the core loop, spawning, and the asyncio clients the server uses."""
