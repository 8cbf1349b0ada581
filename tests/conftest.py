"""Suite-wide setup: every lab a test makes lives in a throwaway MESHLAB_HOME."""

from __future__ import annotations

import os
import tempfile

# Set at import so subprocesses (the CLI, supervisors) inherit it too.
if not os.environ.get("MESHLAB_TEST_KEEP_HOME"):
    os.environ["MESHLAB_HOME"] = tempfile.mkdtemp(prefix="meshlab-test-")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def node_image() -> str:
    """The Docker node image, built offline once (cached by recipe). Skips only when no engine answers;
    CI installs and starts the engine (.ci/run), so there it fails instead: nothing is skipped in CI."""
    from lab import image
    from lab.errors import ProvisionError
    from lab.providers.docker import engine
    from tests.support import test_timer_paused

    try:
        engine(timeout=10).close()
    except ProvisionError as e:
        if os.environ.get("CI"):
            pytest.fail(f"no Docker engine in CI: {e}")
        pytest.skip(f"no Docker engine: {e}")
    with test_timer_paused():
        return image.build(offline=True).image
