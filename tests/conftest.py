"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core box: intra-op threads only contend (20x slower here).

    Opt in per module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down whatever Ray the session left running, once, at its end."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from negseq.executors.ray_logs import quiet_ray

    quiet_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(_ray_session):
    """One embedded Ray (2 CPUs) for every test that needs it: `ray.init` costs seconds on 2 cores.

    Started by the first module that asks and left running for the next; a module that needs
    another cluster (a multi-node `Cluster`, a `ray start` head) shuts it down, and the next
    module that asks starts it again. Quiet as `negseq run` makes it; modules opt in with
    `pytest.mark.usefixtures("local_ray")`."""
    ray = _ray_session
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
