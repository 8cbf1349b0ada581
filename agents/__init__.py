"""What runs on nodes: node supervisor, mesh resolver, demo apps, load generator (and later the proxies).

Standard library only, plus pure-Python packages bundled into the agent zipapp.
Nothing here imports `lab` or `tui`.
"""
