"""Engine workers on Ray: the job manager's pool of workers, and the Ray executor end to end.

The first tests drive :class:`JobManager` with fake engine handles (no Ray): several workers, retry of a
job whose worker was lost, the retry limit, shutdown. The rest start one local Ray instance for the
module (loopback, logical CPUs only, its temp folder removed after) and tiny random models, with two
actors: a server on the Ray executor answers like the in-process server for the same seed; killing the
actor that builds a tree moves the job to the other one and the store holds the complete tree;
``gradalign analyze --executor ray`` writes what the in-process run writes.

Actors compute with as many torch threads as this process (``cpus_per_worker``, which Ray turns into
OMP_NUM_THREADS): the sums in a forward pass are split by thread, and their last bits differ otherwise.
Nothing else in the suite starts Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("grpc_health")

from service_setup import QUESTION, QUESTION_2, tiny_config  # noqa: E402

from gradalign_engine.backends.base import CancelToken  # noqa: E402
from gradalign_engine.errors import Cancelled, ConfigError  # noqa: E402
from gradalign_engine.ray_executor import RayExecutorConfig, WorkerLost  # noqa: E402
from gradalign_server._errors import ServiceError  # noqa: E402
from gradalign_server._jobs import JobManager  # noqa: E402

QUESTION_3 = {**QUESTION, "id": "q3", "question": "what is 2 + 1 ?"}
# Long enough (seconds) that a kill after its first tokens lands mid-tree on a quiet or a loaded machine.
LONG = {"num_rollouts": 16, "max_new_tokens": 120, "nodes_per_path": 6, "continuations": 6}
BIG = {"num_rollouts": 16, "max_new_tokens": 200, "nodes_per_path": 8, "continuations": 8}


# ---------------------------------------------------------------------------------------------- JobManager, no Ray
class _Handle:
    """A fake engine handle: ``lose`` times WorkerLost, then answers with its name."""

    def __init__(self, name: str, lose: int = 0, hold: threading.Event | None = None):
        self.name, self.lose, self.hold, self.recovered = name, lose, hold, 0

    def work(self, cancel: CancelToken) -> str:
        if self.hold is not None:
            while not self.hold.wait(0.01):
                cancel.raise_if_cancelled()
        if self.lose:
            self.lose -= 1
            raise WorkerLost(f"{self.name} died")
        return self.name

    def recover(self, should_stop) -> None:
        self.recovered += 1


def test_jobs_run_on_every_worker_and_running_counts_busy_workers():
    hold = threading.Event()
    seen = []
    jobs = JobManager(
        on_change=lambda running, queued: seen.append(running),
        engines=[_Handle("a", hold=hold), _Handle("b", hold=hold)],
    )
    try:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(jobs.run("t", lambda e, c, n: e.work(c)))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        _until(lambda: jobs.running == 2)
        hold.set()
        for t in threads:
            t.join(10)
        assert sorted(results) == ["a", "b"] and max(seen) == 2 and jobs.running == 0
    finally:
        hold.set()
        assert jobs.shutdown(timeout=5)


def test_a_job_whose_worker_is_lost_runs_again_on_another_worker():
    lossy, healthy = _Handle("lossy", lose=1), _Handle("healthy")
    jobs = JobManager(engines=[lossy])
    done = []
    try:
        assert jobs.run("t", lambda e, c, n: e.work(c)) == "lossy"  # lost once, recovered, retried: same worker
        assert jobs.retries == 1 and lossy.recovered == 1
    finally:
        jobs.shutdown(timeout=5)
    jobs = JobManager(engines=[_Handle("lossy", lose=1), healthy], on_done=lambda j, s, e: done.append((j.attempts, e)))
    try:
        assert jobs.run("t", lambda e, c, n: e.work(c)) in ("healthy", "lossy")
        assert jobs.retries == 1 and done == [(2, None)], "the lost attempt is not reported as done"
    finally:
        jobs.shutdown(timeout=5)


def test_after_the_retries_a_lost_job_fails_unavailable():
    jobs = JobManager(engines=[_Handle("a", lose=10)], max_retries=2)
    try:
        with pytest.raises(ServiceError) as err:
            jobs.run("t", lambda e, c, n: e.work(c))
        assert err.value.code == "UNAVAILABLE" and "lost under this job 3 times" in str(err.value)
    finally:
        jobs.shutdown(timeout=5)


def test_shutdown_before_any_worker_cancels_what_waits():
    jobs = JobManager()  # the engine never loaded: no worker
    job = jobs.submit("t", lambda e, c, n: None)
    assert jobs.shutdown(timeout=1)
    with pytest.raises(Cancelled):
        job.future.result(1)


def test_executor_settings_are_checked_and_named():
    for bad, field in (({"workers": 0}, "ray.workers"), ({"gpus_per_worker": -1}, "ray.gpus_per_worker")):
        with pytest.raises(ConfigError, match=field):
            RayExecutorConfig(**bad)
    with pytest.raises(ConfigError, match="call_timeout_s"):
        RayExecutorConfig(call_timeout_s=float("nan"))
    from gradalign_engine.cli import analyze_main

    assert analyze_main(["--config", "x.toml", "--dataset", "d.jsonl", "--ray-workers", "2"]) == 2


def test_nothing_imports_ray_unless_the_ray_executor_is_selected():
    code = (
        "import sys; import gradalign_server, gradalign_server._cli, gradalign_engine.cli, gradalign_client.cli; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _until(predicate, timeout: float = 60.0, what: str = "condition") -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what} not reached after {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.fixture(scope="module")
def ray_cluster(threads):
    """A local Ray instance on loopback for this module: logical CPUs for two actors at a time."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="gr-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    started = time.monotonic()
    ray.init(
        num_cpus=2 * threads,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp,
    )
    seconds = time.monotonic() - started
    print(f"\n[ray] local Ray instance started in {seconds:.1f} s")
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _strip_seconds(tree: dict) -> dict:
    return {**tree, "summary": {**tree["summary"], "seconds": 0.0}}


def _summary(tree) -> dict:
    fields = {k: v for k, v in vars(tree.summary).items() if k not in ("seconds", "cache_hit")}
    return {"tree_id": tree.tree_id, **fields}


class TestServerOnRay:
    """One server on two actors for these tests (stopped before the analyze test starts its own)."""

    @pytest.fixture(scope="class")
    @classmethod
    def ray_server(cls, ray_cluster, tiny_model_dir, threads):
        from gradalign_client import Client
        from gradalign_server import ServiceLimits, create_server

        executor = RayExecutorConfig(workers=2, cpus_per_worker=threads, start_timeout_s=300)
        started = time.monotonic()
        server, port = create_server(
            tiny_config(tiny_model_dir), executor=executor, limits=ServiceLimits(max_request_tokens=5_000_000)
        )
        try:
            server.wait_until_ready(timeout=300)
            print(f"\n[ray] server with 2 actors ready in {time.monotonic() - started:.1f} s")
            client = Client(f"127.0.0.1:{port}", timeout=120)
            yield server, client
            client.close()
        finally:
            assert server.stop(grace=1)

    def test_same_trees_and_records_as_the_in_process_server(self, ray_server, served):
        server, client = ray_server
        local_server, local = served
        from gradalign_engine.ray_executor import RemoteEngine

        assert isinstance(server.engine, RemoteEngine) and not hasattr(server.engine, "models"), "weights here"
        assert client.list_models() == local.list_models() and client.receipt() == local.receipt()
        questions = [QUESTION, QUESTION_2, QUESTION_3]
        started = time.monotonic()
        with _pool(3) as pool:  # three at once on two actors: both work, one job waits
            remote = list(pool.map(lambda q: client.build_tree(q, seed=11), questions))
        seconds = time.monotonic() - started
        assert all(w.counters.snapshot()["generated_tokens"] > 0 for w in server.engine.workers), "one actor idle"
        for q, tree in zip(questions, remote):
            mine = local.build_tree(q, seed=11)
            assert _summary(tree) == _summary(mine)
            stored = server.store.get_tree(tree.tree_id)
            assert _strip_seconds(stored) == _strip_seconds(local_server.store.get_tree(tree.tree_id))
            streams = [
                [r.to_dict() for r in c.stream_alignments([tree.tree_id], include_skipped=True)]
                for c in (client, local)
            ]
            # Records agree to float32 rounding, not bit for bit: see _first_difference.
            assert len(streams[0]) > 4
            difference = _first_difference(streams[0], streams[1])
            assert not difference, difference
        rankings = [
            [
                dataclasses.asdict(e)
                for e in c.score_teacher([t.tree_id for t in remote], teachers=["demo"], seed=3).ranking
            ]
            for c in (client, local)
        ]
        difference = _first_difference(rankings[0], rankings[1])  # the means come from those records
        assert rankings[0] and not difference, difference
        print(f"[ray] 3 trees on 2 actors in {seconds:.1f} s: ids, trees and records equal to in-process")

    def test_questions_are_checked_on_an_actor_and_refused_with_their_status(self, ray_server):
        from gradalign_client import GradalignError

        _, client = ray_server
        with pytest.raises(GradalignError) as err:
            client.build_tree(QUESTION, settings={"max_new_tokens": 2000})
        assert err.value.code == "INVALID_ARGUMENT" and "more than the student's context of 512" in err.value.details
        with pytest.raises(GradalignError) as err:
            client.score_teacher(["0" * 32], teachers=["demo"])
        assert err.value.code == "NOT_FOUND"

    def test_a_deadline_cancels_the_job_inside_the_actor(self, ray_server, ray_cluster):
        from gradalign_client import GradalignError

        server, client = ray_server
        with pytest.raises(GradalignError) as err:
            client.build_tree(QUESTION, settings=BIG, seed=21, timeout=2.0)
        assert err.value.code == "DEADLINE_EXCEEDED"
        stopped = time.monotonic()
        actors = [w.actor for w in server.engine.workers]
        _until(lambda: not any(s["busy"] for s in ray_cluster.get([a.status.remote() for a in actors])), 10, "idle")
        print(f"[ray] deadline: both actors idle {time.monotonic() - stopped:.2f} s after it passed")

    def test_killing_the_building_actor_moves_the_job_to_the_other(self, ray_server, served):
        server, client = ray_server
        _, local = served
        retries = server.jobs.retries
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(tree=client.build_tree(QUESTION, settings=LONG, seed=31))
        )
        thread.start()
        _until(lambda: any(w.busy and w.counters.snapshot()["generated_tokens"] for w in server.engine.workers))
        victim = next(w for w in server.engine.workers if w.busy)
        before = victim.counters.snapshot()["generated_tokens"]
        _until(lambda: victim.counters.snapshot()["generated_tokens"] > before, 30, "more tokens")  # mid-tree
        pid = victim.pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        assert "tree" not in result, "the tree was finished before the kill: make LONG longer"
        thread.join(180)
        finished = time.monotonic() - killed
        assert "tree" in result, "the build did not complete after the kill"
        tree = result["tree"]
        assert server.jobs.retries == retries + 1
        stored = server.store.get_tree(tree.tree_id)
        assert len(stored["rollouts"]) == LONG["num_rollouts"] and stored["nodes"]
        assert _strip_seconds(stored) == _strip_seconds(
            served[0].store.get_tree(local.build_tree(QUESTION, settings=LONG, seed=31).tree_id)
        )
        replaced = _until(lambda: victim.ready and victim.pid != pid, 180, "a replacement actor")
        assert client.build_tree(QUESTION_2, seed=32).summary.rollouts == 3
        print(
            f"[ray] killed the building actor: the job finished on the other one {finished:.1f} s later; "
            f"replacement actor ready {replaced:.1f} s after that"
        )


def _first_difference(a, b, path: str = "") -> str:
    """Where two JSON-like values first differ, for an assertion message ("" when they agree).

    Floats agree to 1e-4 relative or 1e-6 absolute, NaN with NaN: an actor scores a tree in another process,
    possibly with another cache history (the actor that built it retains its KV cache, the other does
    not), and float32 sums come out different in the last bits: seen here, p by ~1e-7 relative and a KL
    between near-equal distributions by ~1e-5. Everything else must be equal.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return next((d for d in (_first_difference(a.get(k), b.get(k), f"{path}.{k}") for k in keys) if d), "")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next(
            (d for d in (_first_difference(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))) if d), ""
        )
    if isinstance(a, float) and isinstance(b, float) and not isinstance(a, bool):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    else:
        same = type(a) is type(b) and a == b
    return "" if same else f"{path}: {a!r} != {b!r}"


def _pool(n: int):
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(n)


def test_analyze_on_ray_writes_what_analyze_in_process_writes(ray_cluster, tiny_model_dir, tmp_path, threads):
    from gradalign_engine.cli import analyze_main

    config = tmp_path / "run.toml"
    config.write_text(
        f'[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n[sampling]\nmax_new_tokens = 8\n'
        "[rollouts]\nnum_rollouts = 3\nnodes_per_window = 1\nnodes_per_path = 2\ncandidate_top_k = 1\n"
        "continuations = 2\n[analysis]\nbootstrap_samples = 50\nmethods = ['forward_kl', 'reverse_kl']\n"
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
        '[[teachers]]\nname = "cw"\ncontext = "correct_and_wrong"\n'
    )
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps(q) + "\n" for q in (QUESTION, QUESTION_2, QUESTION_3, {**QUESTION_2, "id": "q4"}))
    )
    outputs = {}
    for name, extra in (
        ("inprocess", []),
        ("ray", ["--executor", "ray", "--ray-workers", "2", "--ray-cpus-per-worker", str(threads)]),
    ):
        out, summary = tmp_path / name / "records.jsonl", tmp_path / name / "summary.json"
        started = time.monotonic()
        argv = ["--config", str(config), "--dataset", str(data), "--out", str(out), "--summary", str(summary)]
        assert analyze_main([*argv, "--quiet", *extra]) == 0
        outputs[name] = (out.read_bytes(), json.loads(summary.read_text()), time.monotonic() - started)
    (local, local_summary, local_s), (ray, ray_summary, ray_s) = outputs["inprocess"], outputs["ray"]
    assert ray == local and local.count(b"\n") > 10
    strip = lambda trees: [{**t, "seconds": 0.0} for t in trees]  # noqa: E731
    assert strip(ray_summary["trees"]) == strip(local_summary["trees"])
    assert ray_summary["report"] == local_summary["report"]
    assert ray_summary["cost"]["spent"]["generated_tokens"] == local_summary["cost"]["spent"]["generated_tokens"]
    print(
        f"[ray] analyze, 4 questions: in-process {local_s:.1f} s, 2 actors {ray_s:.1f} s (startup included); same bytes"
    )
