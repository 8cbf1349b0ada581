"""The L7 engine the waypoint and the sidecars share: HTTP/1.1 (sans-IO), route selection, L7 authorization.

Everything here is pure: bytes or plain config in, events or decisions out. No sockets,
no clock (callers pass `now`), no global random (callers pass a `random.Random`).
"""
