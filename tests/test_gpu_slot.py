"""One training run per GPU: gpu_slot holds a slot of the Prefect global concurrency limit (real API)."""

from __future__ import annotations

import threading
import time


def test_gpu_slot_holds_one_slot_and_a_second_run_waits(harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.gpu import gpu_slot

    name = f"gpu-test-{time.monotonic_ns()}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        active = lambda: client.read_global_concurrency_limit_by_name(name).active_slots  # noqa: E731

        order: list[str] = []
        inside, release = threading.Event(), threading.Event()

        def first():
            with gpu_slot(name, require_cuda=False) as held:
                order.append(f"first {held}")
                inside.set()
                release.wait(20)
            order.append("first out")

        t = threading.Thread(target=first)
        t.start()
        inside.wait(20)
        assert active() == 1
        threading.Timer(1.0, release.set).start()
        with gpu_slot(name, require_cuda=False):  # waits for the first to release
            order.append("second")
            assert active() == 1
        t.join()
        assert order == [f"first {name}", "first out", "second"], order
        assert active() == 0
        with gpu_slot("", require_cuda=False) as held:  # disabled: nothing taken
            assert held is None
        with gpu_slot(name, require_cuda=False):  # re-entrant: a nested flow does not wait for itself
            with gpu_slot(name, require_cuda=False) as inner:
                assert inner == name and active() == 1
        assert active() == 0


def test_every_flow_that_loads_a_base_holds_the_slot():
    """Training, routing, evaluation and Experiment 1 all run inside gpu_slot (a no-op without CUDA)."""
    import inspect

    from flows import continual_training, evaluate, pipeline, train_router

    for fn in (continual_training.train_domain, continual_training.continual_training, train_router.train_router,
               evaluate.evaluate, pipeline.brainstacks_pipeline):
        assert "with gpu_slot():" in inspect.getsource(fn.fn), fn.name
