"""The lab's live L7 faults (`meshlab fault add delay|abort ...`) as the L7 engine's `extra_fault` hook.

The control plane puts the faults an agent enforces into its snapshot (`faults`, parsed
into `MeshView.l7_faults`); the matching itself (target service, source, header match,
percentage, expiry) is `agents.common.faults`, shared with the ztunnel's L4 faults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.common.faults import l7_fault
from agents.l7.proxy import Downstream
from agents.l7.routing import Fault, RequestInfo


def live_fault(view: Callable[[], Any]) -> Callable[[RequestInfo, Downstream], Fault | None]:
    """The hook: the current view's L7 faults for one request."""
    def decide(request: RequestInfo, downstream: Downstream) -> Fault | None:
        current = view()
        if current is None or not current.l7_faults:
            return None
        source = downstream.source.workload if downstream.source.workload != "unknown" else None
        return l7_fault(current.l7_faults, request, downstream.service or None, source)
    return decide
