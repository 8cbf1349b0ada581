"""The L7 proxies' agents: waypoints (per namespace or service) and sidecars (per workload), DESIGN §4.

Both put the L7 engine (`agents.l7`) between HBONE or plaintext listeners and upstream
connections: bridge.py joins tunnels and asyncio streams, view.py reads the L7 config out of
a snapshot, connect.py opens upstream connections, agent.py is what both agents share
(certificates, telemetry, admin ports, config versions), waypoint.py and sidecar.py are the
two agents and main.py their command line.
"""
