"""WaitOperation calls held at once are bounded (a quarter of --max-workers): past the bound a
wait answers at once with the operation as it stands, so that waiting callers cannot take
every request thread and leave health checks and other calls unanswered. The SDK asks again
after a pause until its wait is used up. A real control plane with few threads, a slow
evaluation to wait on."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelplane.v1 import operations_pb2, operations_pb2_grpc
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_evaluation_control import dataset, register, wait_running

WAITERS = 6


def test_waiters_past_the_bound_are_answered_at_once_and_health_still_answers(
    tmp_path: Path,
) -> None:
    data = dataset(tmp_path)
    # 4 request threads and 1 for watches: one wait may be held at once.
    cp = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", max_workers=4, max_watches=1
    )
    channel = grpc.insecure_channel(cp.address)
    try:
        with cp.client() as c:
            model_id, version = register(c, tmp_path, 10**12)
            running = c.evaluate(model_id, version, data, label="target", compare_to="-")
            wait_running(c, running.name)
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            request = operations_pb2.WaitOperationRequest(name=running.name)
            request.timeout.FromTimedelta(timedelta(seconds=20))
            answers: list[operations_pb2.Operation] = []
            answered = threading.Semaphore(0)

            def wait() -> None:
                answers.append(stub.WaitOperation(request, timeout=60))
                answered.release()

            threads = [threading.Thread(target=wait) for _ in range(WAITERS)]
            for t in threads:
                t.start()
            # All but the one held wait are answered without waiting for their 20 s.
            for _ in range(WAITERS - 1):
                assert answered.acquire(timeout=10), "a wait past the bound was held"
            assert len(answers) == WAITERS - 1 and not any(a.done for a in answers)
            # With the held wait still waiting, the server answers everything else.
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert not c.get_operation(running.name).done
            # The SDK's wait, answered early, asks again until its own wait is used up.
            assert not c.wait_operation(running.name, 2.5).done
            cancelled = c.cancel_operation(running.name)
            assert cancelled.done
            for t in threads:
                t.join(30)
            assert len(answers) == WAITERS and answers[-1].done  # the held wait ends with it
            assert c.wait_operation(running.name, 5).error.reason == "CANCELLED"
    finally:
        channel.close()
        cp.handle.stop(0)
