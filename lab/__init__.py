"""meshlab host side: topology model, providers, orchestration and the CLI."""
