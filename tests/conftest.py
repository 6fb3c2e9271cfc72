"""What every test may use: the one-time native builds, a free port, two tiny corpora.

Fixtures: ``free_port`` (a TCP port free on 127.0.0.1, for the rendezvous of multi-process tests),
``tiny_corpus`` (the ``tiny`` synthetic corpus, seed 3, MJPEG) and ``tiny_market`` (a Market-1501 folder of
12 training and 10 test identities); each corpus is built once per test run and read-only to the tests.
Helpers that are not tests live in ``tests/support/``.

One-time builds, done once before the first test instead of inside one.

DeepSpeed compiles its shared-memory op the first time any process starts its engine on a CPU machine,
and the CUDA ops are JIT-compiled on the first call on a GPU when ``reidscale._C`` was not built at
install. Inside a test that build would count against the test's own guard on a hung subprocess and make
its outcome depend on the machine's load and on what an earlier session left in the caches. So when the
selected tests include any marked ``deepspeed`` (or ``gpu``, with a CUDA device), ``reidscale.prebuild``
runs here first, with no time limit, and says what it did. Its cost is paid once per cache folder
(``TORCH_EXTENSIONS_DIR``, ``REIDSCALE_CUDA_CACHE``); later sessions find the builds in about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.ports import free_port as _free_port


@pytest.fixture
def free_port() -> int:
    """A TCP port the OS reports free on 127.0.0.1 right now."""
    return _free_port()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` synthetic corpus (seed 3, MJPEG videos), built once per test run; do not modify it."""
    from reidscale.data.synth import build_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    build_corpus(out, "tiny", seed=3, codec="mjpeg")
    return out


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Market-1501 folder (``write_tiny_market``: 12 training, 10 test identities), built once per
    test run; do not modify it."""
    from tests.support.tiny_market import write_tiny_market

    root = tmp_path_factory.mktemp("tiny_market")
    write_tiny_market(root, num_train=12, num_test=10)
    return root


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: only the tests that will run count
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    needs_deepspeed = any(item.get_closest_marker("deepspeed") for item in items)
    needs_cuda_ops = any(item.get_closest_marker("gpu") for item in items)
    if not (needs_deepspeed or needs_cuda_ops):
        return
    from reidscale import prebuild

    results = []
    if needs_deepspeed:
        results.append(prebuild.prebuild_deepspeed_ops())
    if needs_cuda_ops:
        import torch

        if torch.cuda.is_available():
            results.append(prebuild.prebuild_cuda_ops())
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for result in results:
        line = f"one-time build before the tests: {result.line()}"
        if reporter is not None:
            reporter.write_line(line)
        else:  # pragma: no cover - without the terminal plugin (-p no:terminal)
            print(line)
