"""The deactivate / cleanup / shutdown / error transitions the stream-processing lifecycle nodes share."""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn


class StreamLifecycleNode(LifecycleNode):
    """A lifecycle node that subscribes while active and owns outputs while configured.

    Subclasses implement ``_stop_inputs()`` (drop subscriptions, stop the worker, forget pending frames) and
    ``_release()`` (destroy publishers, free the model, ``_state = "unconfigured"``); ``_state`` mirrors the
    lifecycle state for diagnostics. ``diagnostic_status()`` describes the node; :meth:`publish_diagnostics`
    sends it on ``_diagnostics_pub``.
    """

    _state: str = "unconfigured"
    _diagnostics_pub: Any = None

    def diagnostic_status(self) -> DiagnosticStatus:
        raise NotImplementedError

    def publish_diagnostics(self) -> None:
        """Publish :meth:`diagnostic_status` on /diagnostics, stamped now."""
        msg = DiagnosticArray(status=[self.diagnostic_status()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(msg)

    def _stop_inputs(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        self._state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS
