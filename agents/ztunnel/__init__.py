"""The ztunnel: the per-node L4 proxy of ambient mode (mTLS, HBONE, L4 policy, telemetry)."""
