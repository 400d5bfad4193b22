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
def local_ray():
    """One embedded Ray (2 CPUs) for every test that needs it: `ray.init` costs seconds on 2 cores.

    Quiet as `negseq run` makes it; modules opt in with `pytest.mark.usefixtures("local_ray")`."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from negseq.executors.ray_logs import quiet_ray

    quiet_ray()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
