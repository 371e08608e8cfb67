"""What the stream-processing lifecycle nodes share: their plumbing, the /diagnostics timer, the ends of configure
and activate, and the deactivate / cleanup / shutdown / error transitions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from rclpy.timer import Timer

from stereovoxel_ros.core.stereo.newest_item_worker import NewestItemWorker


class StreamLifecycleNode(LifecycleNode):
    """A lifecycle node that subscribes while active and owns outputs while configured.

    Subclasses declare a ``diagnostics_period`` parameter and call :meth:`_init_stream` in their constructor,
    subscribe with :meth:`_subscribe_inputs`, keep their lifecycle publishers in ``_outputs``, end configure and
    activate with :meth:`_configured` and :meth:`_activated`, and implement ``_forget_configuration()`` (free
    the model and what configure made). ``_state`` mirrors the lifecycle state for diagnostics.
    ``diagnostic_status()`` describes the node; :meth:`publish_diagnostics` sends it on ``_diagnostics_pub``.
    """

    _state: str = "unconfigured"
    _diagnostics_pub: Any = None

    def _init_stream(self, on_item: Callable[[Any], None]) -> None:
        """The inference worker (newest item only), input and diagnostics callback groups, /diagnostics and its
        timer at the ``diagnostics_period`` parameter (1 s while that is invalid: configure names it)."""
        self.configure_error = ""
        self._inputs: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._worker: NewestItemWorker[Any] = NewestItemWorker(on_item, name=f"{self.get_name()}_inference")
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._diagnostics_group = MutuallyExclusiveCallbackGroup()
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer: Timer | None = None
        period = self.get_parameter("diagnostics_period").value
        self._start_diagnostics(period if isinstance(period, float) and 0.05 <= period <= 60.0 else 1.0)

    def _start_diagnostics(self, period_s: float) -> None:
        """Publish /diagnostics every ``period_s`` [s] on the steady clock (a timer at another period is replaced)."""
        if self._diagnostics_timer is not None:
            if abs(self._diagnostics_timer.timer_period_ns - period_s * 1e9) < 1:
                return
            self.destroy_timer(self._diagnostics_timer)
        self._diagnostics_timer = self.create_timer(
            period_s,
            self.publish_diagnostics,
            callback_group=self._diagnostics_group,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    def _configure_failed(self, err: Exception) -> TransitionCallbackReturn:
        """Stay unconfigured with the reason logged and kept in ``configure_error`` (diagnostics report it)."""
        self.configure_error = str(err)
        self.get_logger().error(f"configure failed, node stays unconfigured: {err}")
        return TransitionCallbackReturn.FAILURE

    def _configured(self, state: LifecycleState, description: str) -> TransitionCallbackReturn:
        """End a successful configure: clear the last failure, log ``configured: <description>``, go inactive."""
        self.configure_error = ""
        self.get_logger().info(f"configured: {description}")
        self._state = "inactive"
        return super().on_configure(state)

    def _subscribe_inputs(
        self, streams: Sequence[tuple[type, str, Callable[[Any], None], QoSProfile]]
    ) -> None:
        """Start the worker and subscribe to each (message type, topic, callback, QoS) in the input group."""
        self._worker.start()
        self._inputs = [
            self.create_subscription(kind, topic, callback, qos, callback_group=self._input_group)
            for kind, topic, callback, qos in streams
        ]

    def _activated(self, state: LifecycleState, description: str) -> TransitionCallbackReturn:
        """End a successful activate: log ``active: <description>`` and go active."""
        self._state = "active"
        self.get_logger().info(f"active: {description}")
        return super().on_activate(state)

    def diagnostic_status(self) -> DiagnosticStatus:
        raise NotImplementedError

    def _status(
        self, level: bytes, message: str, what: str, hardware_id: str, values: dict[str, str]
    ) -> DiagnosticStatus:
        """The node's DiagnosticStatus, named ``<node>: <what>``; after a failed configure it is ERROR, saying why."""
        if self.configure_error:
            level, message = DiagnosticStatus.ERROR, f"configure failed: {self.configure_error}"
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: {what}",
            message=message,
            hardware_id=hardware_id,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def publish_diagnostics(self) -> None:
        """Publish :meth:`diagnostic_status` on /diagnostics, stamped now."""
        msg = DiagnosticArray(status=[self.diagnostic_status()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(msg)

    def _forget_configuration(self) -> None:
        raise NotImplementedError

    def _stop_inputs(self) -> None:
        """Drop the subscriptions and stop the worker (it forgets a pending item)."""
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs = []
        self._worker.stop()

    def _release(self) -> None:
        """Destroy the publishers and forget the configuration."""
        for pub in self._outputs.values():
            self.destroy_lifecycle_publisher(pub)
        self._outputs = {}
        self._forget_configuration()
        self._state = "unconfigured"

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
