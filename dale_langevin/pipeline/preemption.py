"""Preemption: a SIGTERM asks the training loop to save at the next step boundary and stop.

Spot and preemptible VMs get a SIGTERM shortly before they go, and ``launch/tpu_train.sh stop``
sends one too. With one process a Python handler records it. With several (``jax.distributed``
initialised) JAX's own preemption service catches the signal on whichever host gets it and picks
one step at which every process stops (:func:`jax.experimental.multihost_utils.reached_preemption_sync_point`),
so all of them save the same step.
"""

from __future__ import annotations

import signal
import threading

import jax

# The status a process killed by SIGTERM reports (128 + 15): the run did not finish, and a
# scheduler that requeues signalled jobs treats it as such.
EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
    """Training stopped on request at ``step`` after saving it; rerunning the same command resumes there."""

    def __init__(self, step: int, directory):
        self.step, self.directory = step, directory
        super().__init__(
            f"Preempted: saved step {step} in {directory} and stopped. Rerun the same command to continue."
        )


class Watch:
    """Context manager: ``reached(step)`` is True at the step where the loop should save and stop.

    Single process: a SIGTERM handler (installed on entry, the previous one restored on exit; only
    from the main thread, where Python delivers signals) sets a flag. Several processes: JAX's
    preemption sync point, called at every step as its contract requires.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._multi = False

    def __enter__(self) -> Watch:
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        self.received = signum

    def reached(self, step: int) -> bool:
        """True if a stop was requested: at once with one process, at the agreed step with several."""
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
                return False
        return self.received is not None

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
