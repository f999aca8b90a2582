"""`smoothgen certify --ray` and `smoothgen center --ray` (smoothgen.distributed), on a local multi-node Ray
cluster (ray.cluster_utils.Cluster: a head without CPUs and one-CPU worker nodes, all on this machine).

Every record must equal a local run's apart from `time` and `worker`, each unit exactly once, also when a
worker node dies mid-run or the driver is killed and the run resumed. A watchdog fails a hanging test
(faulthandler dumps every thread's stack and exits) instead of hanging CI; subprocesses have timeouts.
"""
import faulthandler
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from smoothgen.cli import main
from smoothgen.jobs import without_timing

WATCHDOG_S = 150  # one test; the whole module takes about a minute on 2 cores
NUM = 10  # inputs of the certify runs; n below makes one take ~0.4 s on one core, so a run outlives a kill
CERTIFY = ["--n0", "50", "--n", "16000", "--batch-size", "2000", "--no-progress"]
CENTER = ["--num", "2", "--eps-in", "0.2,0.4", "--n", "300", "--m", "500", "--n-candidates", "10", "--no-progress"]
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    faulthandler.dump_traceback_later(90, exit=True)  # starting it (~10 s here) must not hang either
    # A node that stops answering is declared dead after ~5 s here (Ray's default: ~15 s), so that the
    # test of a lost node does not wait for it. The head runs no tasks, as in a cluster whose head is busy.
    health = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 4}
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * MIB,
                                                          "include_dashboard": False, "_system_config": health})
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=1, object_store_memory=80 * MIB)
        nodes.wait_for_nodes()
        faulthandler.cancel_dump_traceback_later()
        yield nodes
    finally:
        nodes.shutdown()


#: Inputs of the lost-node test: with 2 x NUM, the node that joins last (its worker starts cold while the
#: others' are warm) holds more than one input when its first record arrives; with NUM it sometimes held
#: one, finished last, and was "killed" after the run's last record (1 run in 4, before any other change).
NUM_LOST = 2 * NUM


@pytest.fixture(scope="module")
def all_references(tmp_path_factory):
    """The local run's records of NUM_LOST inputs, by idx."""
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    assert main(["certify", "--num", str(NUM_LOST), *CERTIFY, "--out", str(out)]) == 0
    return {r["idx"]: without_timing(r) for r in _records(out)}


@pytest.fixture(scope="module")
def reference(all_references):
    """The local run's records of the certify tests (NUM inputs), by idx."""
    return {i: all_references[i] for i in range(NUM)}


def _records(path):
    """The whole records of a results file (a line still being written is left out)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1]]


def _assert_same_as_local(records, reference):
    """Every idx exactly once, each record equal to the local one apart from time and worker."""
    assert sorted(r["idx"] for r in records) == sorted(reference)
    for r in records:
        assert r["worker"], r
        assert without_timing(r) == reference[r["idx"]]


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def test_certify_on_cluster_equals_local_run(cluster, reference, tmp_path, capsys):
    out = tmp_path / "ray.jsonl"
    tsv = tmp_path / "ray.tsv"
    code = main(["certify", "--ray", cluster.address, "--num", str(NUM), *CERTIFY, "--out", str(out), "--tsv", str(tsv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = _records(out)
    _assert_same_as_local(records, reference)
    workers = {r["worker"] for r in records}
    assert 1 <= len(workers) <= 2  # two one-CPU nodes; nothing runs on the CPU-less head
    # Each worker process built its runtime once, not once per input.
    assert f"ray: {NUM} records from {len(workers)} worker processes ({len(workers)} runtimes built)" in captured.err
    assert "certified accuracy" in captured.out and f"wrote {NUM} records" in captured.out
    assert len(tsv.read_text().splitlines()) == NUM + 1
    # A run written on Ray resumes locally (and the other way round): the same run parameters.
    assert main(["certify", "--num", str(NUM + 1), *CERTIFY, "--out", str(out), "--resume"]) == 0
    assert sorted(r["idx"] for r in _records(out)) == list(range(NUM + 1))
    assert "worker" not in _records(out)[-1]


def test_worker_node_lost_mid_run(cluster, all_references, tmp_path, capsys):
    """A worker node dies with inputs in flight: they are retried on the others, none lost or written twice."""
    doomed = cluster.add_node(num_cpus=1, object_store_memory=80 * MIB)
    cluster.wait_for_nodes()
    tag = f"/{doomed.node_id[:8]}/"
    out = tmp_path / "ray.jsonl"
    seen = {}

    def kill_after_its_first_record():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "removed" not in seen:
            records = _records(out)
            if any(tag in r["worker"] for r in records):
                seen["records_before"] = len(records)
                cluster.remove_node(doomed, allow_graceful=False)  # SIGKILL: raylet and its workers
                seen["removed"] = time.monotonic()
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_its_first_record, daemon=True)
    killer.start()
    code = main(["certify", "--ray", cluster.address, "--num", str(NUM_LOST), *CERTIFY, "--out", str(out)])
    killer.join(timeout=30)
    assert code == 0, capsys.readouterr().err
    assert "removed" in seen, "the extra node never computed a record (the test needs it to)"
    assert seen["records_before"] < NUM_LOST  # it died mid-run
    _assert_same_as_local(_records(out), all_references)


def test_driver_stopped_or_killed_then_resumed(cluster, reference, tmp_path, capsys):
    """SIGTERM stops the driver between whole records (exit 143, one line); SIGKILL at any moment; either
    way --resume finishes the run with every input once."""
    out = tmp_path / "ray.jsonl"
    command = [sys.executable, "-m", "smoothgen", "certify", "--ray", cluster.address, "--num", str(NUM), *CERTIFY,
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_until(records, signum, *extra):
        driver = subprocess.Popen([*command, *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: len(_records(out)) >= records or driver.poll() is not None, 90, f"{records} records")
            assert driver.poll() is None, driver.stderr.read()
            driver.send_signal(signum)
            _, err = driver.communicate(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.communicate(timeout=30)
        return driver.returncode, err

    code, err = run_until(2, signal.SIGTERM)
    assert code == 143 and err.strip().splitlines()[-1] == (
        "smoothgen certify: interrupted; whole records are kept, rerun with --resume"), (code, err[-3000:])
    stopped = len(_records(out))
    code, _ = run_until(stopped + 2, signal.SIGKILL, "--resume")
    assert code == -signal.SIGKILL
    killed = len(_records(out))
    assert stopped < killed < NUM
    assert main(["certify", "--ray", cluster.address, "--num", str(NUM), *CERTIFY, "--out", str(out), "--resume"]) == 0
    assert f"ray: {NUM - killed} records" in capsys.readouterr().err
    _assert_same_as_local(_records(out), reference)


def test_model_file_is_sent_to_the_workers(cluster, tmp_path, monkeypatch, capsys):
    """A --model file the workers cannot see at its path (here: relative to the driver's working directory,
    while the test cluster's workers run in the directory it was started from) reaches them through Ray."""
    import torch

    from smoothgen.models import load_classifier

    monkeypatch.chdir(tmp_path)
    program = torch.export.export(load_classifier(0.25), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=100_000)},))
    torch.export.save(program, "shipped_model.pt2")  # the suffix must survive the trip: it names the format
    assert not (Path(__file__).parents[1] / "shipped_model.pt2").exists()
    common = ["certify", "--model", "shipped_model.pt2", "--num", "3", *CERTIFY]
    assert main([*common, "--out", "local.jsonl"]) == 0
    assert main([*common, "--ray", cluster.address, "--out", "ray.jsonl"]) == 0
    capsys.readouterr()
    expected = {r["idx"]: without_timing(r) for r in _records(tmp_path / "local.jsonl")}
    records = _records(tmp_path / "ray.jsonl")
    assert len(records) == 3 and all(without_timing(r) == expected[r["idx"]] for r in records)
    assert records[0]["model"] == str(tmp_path / "shipped_model.pt2")


def test_onnx_external_data_is_sent_with_the_model(cluster, tmp_path, monkeypatch, capsys):
    """Issue 25: an ONNX model whose weights torch's exporter wrote to model.onnx.data beside it: workers
    that cannot see the files get both (a worker with the .onnx alone could not load it)."""
    import torch

    from smoothgen.models import load_classifier

    monkeypatch.chdir(tmp_path)
    torch.onnx.export(load_classifier(0.25), (torch.zeros(1, 1, 8, 8),), "split_model.onnx", input_names=["input"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=100_000)}})
    assert (tmp_path / "split_model.onnx.data").exists()
    common = ["certify", "--model", "split_model.onnx", "--num", "3", *CERTIFY]
    assert main([*common, "--out", "local.jsonl"]) == 0
    assert main([*common, "--ray", cluster.address, "--out", "ray.jsonl"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    expected = {r["idx"]: without_timing(r) for r in _records(tmp_path / "local.jsonl")}
    records = _records(tmp_path / "ray.jsonl")
    assert len(records) == 3 and all(without_timing(r) == expected[r["idx"]] for r in records)


def test_worker_error_is_one_line(cluster, tmp_path, monkeypatch, capsys):
    """A SmoothgenError raised on a worker is the same one-line error as a local run's, not a Ray traceback."""
    (tmp_path / "driver_only.py").write_text(textwrap.dedent("""
        import ray
        import torch

        def model():
            if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
                raise RuntimeError("this factory only works on the driver")
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # Ray puts the driver's working directory on its workers' sys.path
    out = tmp_path / "r.jsonl"
    code = main(["certify", "--ray", cluster.address, "--model", "driver_only:model", "--num", "2", *CERTIFY, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("smoothgen certify: error:")]
    assert len(lines) == 1 and "model factory driver_only:model failed: this factory only works on the driver" in lines[0]
    assert "on Ray worker" in lines[0] and "Traceback" not in err
    assert not out.exists()  # no record, no file


def test_no_worker_fits_is_one_line(cluster, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    code = main(["certify", "--ray", cluster.address, "--ray-gpus-per-worker", "1", "--num", "2", *CERTIFY, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no node of the Ray cluster can run a worker of 1 CPU and 1 GPU" in err
    assert not out.exists()


def test_center_on_local_instance_equals_local_run(tmp_path, capsys):
    # Last of the Ray tests: a local instance started by ray.init turns on Ray's token authentication for
    # the rest of this process (Ray 2.60 sets RAY_AUTH_MODE=token), after which it cannot join the test
    # cluster, which runs without it. The CLI runs once per process; a test of it need not.
    ray = pytest.importorskip("ray")
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["center", *CENTER, "--out", str(local)]) == 0
    # --ray without an address: a local Ray instance for this run (two one-CPU workers), stopped after it.
    assert main(["center", "--ray", "--ray-workers", "2", *CENTER, "--out", str(remote)]) == 0
    assert not ray.is_initialized()
    expected = {(r["idx"], r["eps_in"]): without_timing(r) for r in _records(local)}
    records = _records(remote)
    assert sorted((r["idx"], r["eps_in"]) for r in records) == sorted(expected)
    for r in records:
        assert r["worker"] and without_timing(r) == expected[(r["idx"], r["eps_in"])]
    assert "median eps_out" in capsys.readouterr().out


@pytest.mark.parametrize(
    "ray_args, message",
    [
        (["--ray", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--ray", "nonsense"], "is not a Ray address"),
        (["--ray", "--ray-cpus-per-worker", "0"], "--ray-cpus-per-worker must be > 0"),
        (["--ray", "--ray-workers", "0"], "--ray-workers must be >= 1"),
        (["--ray-workers", "2"], "--ray-workers applies only with --ray"),
    ],
)
def test_bad_ray_arguments_are_one_line(ray_args, message, tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "r.jsonl"
    started = time.monotonic()
    code = main(["certify", *ray_args, "--num", "2", *CERTIFY, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert time.monotonic() - started < 20  # refused up front: ray.init would wait minutes on a dead address
    assert not out.exists()


@pytest.mark.parametrize("command", [["certify"], ["center", "--num", "1"]])
def test_without_ray_names_the_extra(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "r.jsonl"
    assert main([*command, "--ray", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'smoothgen[serve]'" in err
    assert not out.exists()


def test_help_does_not_import_ray():
    code = ("import sys\nfrom smoothgen.cli import main\ntry:\n    main(['certify', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--ray [ADDRESS]" in result.stdout
    assert result.stdout.strip().endswith("False")
