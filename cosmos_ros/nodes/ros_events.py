"""Subscriptions without rclpy's default QoS event handlers, for nodes that run a model in a worker thread
beside a MultiThreadedExecutor.

Why: with Fast DDS, a subscription that carries an event handler (rclpy attaches incompatible-QoS and
incompatible-type handlers by default) made the MultiThreadedExecutor wake from ``rcl_wait`` with nothing
ready 1,500-2,400 times a second while a publisher fed it (the sim arm's camera and joint states at 10
Hz): one executor thread at 80-90% of a core, holding the GIL; the model's worker thread at about 15%.
Measured in the predictor node with one torch thread (session 12, 2 cores): ``check_collision`` of 8
candidates took 14-29 s with the handlers, 6.6 s without; a bare ``Predictor.predict`` 4.9 s. A
SingleThreadedExecutor does not spin so. ``benchmarks/bench_executor_events.py`` measures it. The price:
rclpy no longer logs its own warning when a publisher's QoS or type is incompatible with the subscription;
the nodes say when no message arrives.
"""

from __future__ import annotations

try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble: the same class (use_default_callbacks included) lives in rclpy.qos_event
    from rclpy.qos_event import SubscriptionEventCallbacks  # type: ignore[no-redef]


def without_event_handlers() -> SubscriptionEventCallbacks:
    """``event_callbacks`` for ``create_subscription``: no QoS event handlers at all (see the module)."""
    return SubscriptionEventCallbacks(use_default_callbacks=False)
