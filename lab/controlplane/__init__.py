"""The control plane: one daemon per lab that owns the CA, the config store and the two APIs.

`python -m lab.controlplane --lab NAME` is started by `meshlab up`. It serves
the agent channel (TLS, `channel.py`) and the lab API (HTTP+JSON on loopback,
`api.py`). The data plane keeps serving with its last config when it is gone.
"""
