import os
import sys
from pathlib import Path

import pytest
import torch

# `python -m pytest` puts the repository root on sys.path, where our `kernels/` folder would pass for
# Hugging Face's `kernels` package, which transformers imports when it finds one. The project is
# imported through its install (`dinov3_deploy.kernels`), so the root is taken off the path.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if p not in ("", ".") and Path(p).resolve() != _ROOT]


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: kernels run on the CPU

# Two cores on CI: at most two intra-op threads per test process, and the cores shared among
# pytest-xdist's workers when the suite runs on several (so they do not oversubscribe the CPU).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))
if "PYTEST_XDIST_WORKER" in os.environ:
    # xdist's workers start with COLUMNS=80 / LINES=24; a plain run has neither, and the CLI's tables
    # are written wide when output is not a terminal (commands/_progress.make_console): keep that.
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


_INVALID_MANIFESTS: list[str] = []


@pytest.fixture(autouse=True, scope="session")
def _validate_written_manifests():
    """Every manifest.json the test suite writes is validated against
    dinov3_deploy/manifest.schema.json (the contract C++ deployers read). Session-wide, so
    manifests written by module-scoped fixtures are checked too."""
    from manifest_helpers import schema_errors

    from dinov3_deploy.manifest import Manifest

    write = Manifest.write

    def validated_write(self, root):
        errors = schema_errors(self.to_dict())
        if errors:
            _INVALID_MANIFESTS.append(f"{root}: " + "; ".join(errors))
        return write(self, root)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Manifest, "write", validated_write)
        yield


@pytest.fixture(autouse=True)
def _written_manifests_match_the_schema(_validate_written_manifests):
    """Fails the test during which (its fixtures included) an invalid manifest was written;
    checked at teardown, so code that catches exceptions cannot hide it."""
    yield
    if _INVALID_MANIFESTS:
        invalid = list(_INVALID_MANIFESTS)
        _INVALID_MANIFESTS.clear()
        pytest.fail("a manifest written here breaks manifest.schema.json:\n" + "\n".join(invalid))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine two threads spin more than they
    compute on small tensors."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
