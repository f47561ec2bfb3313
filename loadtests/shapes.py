"""Load shapes for ``loadtests/locustfile.py`` (chosen there by ``LOAD_SHAPE``).

- :class:`StepLoadShape`: closed-loop users added in steps, to find the knee of the latency curve.
- :class:`ArrivalRateShape`: an open-loop arrival rate in requests per second, stepped up; each
  :class:`~locustfile.OpenLoopUser` is a Poisson source of ``LOAD_USER_RATE`` streams per second,
  so the shape runs ``ceil(rate / LOAD_USER_RATE)`` of them. Closed-loop users slow down when the
  server does and so hide queueing; open-loop arrivals keep coming and show it.

Environment (all optional): ``STEP_USERS`` (users added per step, default 2), ``STEP_SECONDS``
(default 10), ``STEP_MAX_USERS`` (default 8), ``ARRIVAL_RATES`` (comma list of requests per
second, one per stage, default ``0.5,1,2``), ``ARRIVAL_STAGE_SECONDS`` (default 10),
``LOAD_USER_RATE`` (default 0.5). Each shape ends after its last step or stage.
"""

from __future__ import annotations

import math
import os

from locust import LoadTestShape


def _tick(users: int, rate: float, classes: list[type]) -> tuple[int, float] | tuple[int, float, list[type]]:
    """A tick's answer, naming the user classes when the locustfile set them."""
    return (users, rate, classes) if classes else (users, rate)


class StepLoadShape(LoadTestShape):
    """``STEP_USERS`` more closed-loop streaming users every ``STEP_SECONDS``, up to ``STEP_MAX_USERS``."""

    step_users = int(os.environ.get("STEP_USERS", "2"))
    step_seconds = float(os.environ.get("STEP_SECONDS", "10"))
    max_users = int(os.environ.get("STEP_MAX_USERS", "8"))
    run_classes: list[type] = []  # set by the locustfile: its closed-loop user

    def tick(self) -> tuple[int, float] | tuple[int, float, list[type]] | None:
        """Users and spawn rate now; None once the last step has run its time."""
        steps = math.ceil(self.max_users / self.step_users)
        step = int(self.get_run_time() // self.step_seconds)
        if step >= steps:
            return None
        return _tick(min((step + 1) * self.step_users, self.max_users), float(self.step_users), self.run_classes)


class ArrivalRateShape(LoadTestShape):
    """Open-loop arrival rates (``ARRIVAL_RATES`` requests per second), each for ``ARRIVAL_STAGE_SECONDS``."""

    rates = [float(r) for r in os.environ.get("ARRIVAL_RATES", "0.5,1,2").split(",") if r]
    stage_seconds = float(os.environ.get("ARRIVAL_STAGE_SECONDS", "10"))
    user_rate = float(os.environ.get("LOAD_USER_RATE", "0.5"))
    run_classes: list[type] = []  # set by the locustfile: its open-loop user

    def tick(self) -> tuple[int, float] | tuple[int, float, list[type]] | None:
        """Open-loop sources for this stage's rate; None after the last stage."""
        stage = int(self.get_run_time() // self.stage_seconds)
        if stage >= len(self.rates):
            return None
        users = max(1, math.ceil(self.rates[stage] / self.user_rate))
        return _tick(users, float(users), self.run_classes)
