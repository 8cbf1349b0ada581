"""Suite-wide setup: every lab a test makes lives in a throwaway MESHLAB_HOME."""

from __future__ import annotations

import os
import tempfile

# Set at import so subprocesses (the CLI, supervisors) inherit it too.
if not os.environ.get("MESHLAB_TEST_KEEP_HOME"):
    os.environ["MESHLAB_HOME"] = tempfile.mkdtemp(prefix="meshlab-test-")
