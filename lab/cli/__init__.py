"""The `meshlab` command line: a thin client of the lab's orchestration (later, of the lab API)."""
