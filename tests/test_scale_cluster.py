"""`clip-rt ray` on a multi-node Ray cluster on this machine: Ray's own test cluster
(``ray.cluster_utils.Cluster``), a head node (no CPUs: the drivers attach there and the parts are
written there, the actors run on the workers) and one-CPU worker nodes, each node its own raylet
on 127.0.0.1 with a 100 MB object store and its own ``CLIP_RT_HOME`` (as separate machines have).
Drivers are separate processes running the CLI, as a user runs them.

- a worker node removed while ``clip-rt ray classify --ship-bundle`` runs: the job completes
  (Ray restarts the lost actor and redoes its lost work) or fails in one line, and a rerun
  completes it; every input exactly once, the labels of ``clip-rt classify``;
- the driver killed (SIGKILL) mid-job: the rerun writes only what is missing;
- a node that cannot load the model: one ``Error:`` line naming that node, exit 1;
- ``--ship-bundle`` on a node that chooses a derived mode (an injected AMX CPU: OpenVINO, the
  int8 graph in bf16): that node fetches the fp32 graph, checks the mode and runs it.

The cluster is torn down by the fixture, also when a test fails; every process it started is
checked gone (and killed if not). The first part of the file tests the pieces without Ray
processes (shipping, a damaged shipped copy, errors, the per-node footers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402

pytest.importorskip("ray.data", reason="the [ray] extra (ray[data]) is not installed: pip install -e '.[ray]'")
pa = pytest.importorskip("pyarrow")
psutil = pytest.importorskip("psutil")

from bench.ray_cluster import LEDGER_DRIVER, read_ledger  # noqa: E402
from clip_rt.cli import main  # noqa: E402
from clip_rt.engine.cpu import ENV_FLAGS  # noqa: E402
from clip_rt.errors import BundleError  # noqa: E402
from clip_rt.inputs.discover import path_key  # noqa: E402
from clip_rt.scale import actors, nodes, parts  # noqa: E402

try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:
    HAVE_OV = False

AMX_FLAGS = "x86_64: amx_tile amx_int8 amx_bf16 avx512_bf16 avx512_vnni avx512f avx2"
LABELS = "cat,dog,car,tree"
NODE_MB = 100
JOB_TIMEOUT_S = 300


# -- bundles and photos -------------------------------------------------------------------------
def nncf_int8_bundle(path: Path, gate: float = 0.99) -> Path:
    """A fake bundle with fp32 and (stand-in) int8 graphs, the int8 one recorded as NNCF's static
    int8 that passed its export gate (*gate*): on an AMX CPU with OpenVINO the choice table runs
    it in bf16, a derived mode checked against the fp32 graph before use."""
    b = build_fake_bundle(path, precisions=("fp32", "int8"))
    data = json.loads((b / "manifest.json").read_text())
    data["parity"] = {
        "int8": {
            e: {
                "max_abs_diff": 0.01,
                "min_cosine": 0.9995,
                "samples": 8,
                "tolerance": {"min_cosine": gate},
                "passed": True,
            }
            for e in ("image", "text")
        }
    }
    data["quantization"] = {
        "int8": {
            e: {"kind": "static", "per_channel": True, "method": "nncf", "activations": "int8"}
            for e in ("image", "text")
        }
    }
    (b / "manifest.json").write_text(json.dumps(data))
    return b


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("bundle") / "fake-clip")


@pytest.fixture(scope="module")
def big_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 photos of 2400 x 2400 (smooth, so small files that still take tens of milliseconds
    each to decode: the job runs long enough to lose a node in the middle), plus a broken one."""
    folder = tmp_path_factory.mktemp("big-photos")
    side = 2400
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    sources = []
    for i in range(6):
        a, b, c = np.random.default_rng(i).random(3) * 0.02
        arr = np.stack(
            [np.sin(xx * a + yy * b) * 127 + 128, np.cos(yy * c + i) * 127 + 128, (xx + yy * (i + 1)) % 256], -1
        ).astype(np.uint8)
        sources.append(folder / f"source{i}.jpg")
        Image.fromarray(arr).save(sources[-1], quality=90)
    for i in range(90):
        shutil.copy(sources[i % len(sources)], folder / f"copy{i:03d}.jpg")
    (folder / "broken.jpg").write_text("not a jpeg")
    return folder


def small_photos(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size=(20 + i, 30, 3), dtype=np.uint8)).save(folder / f"s{i:02d}.png")
    return folder


def cli_classify(photos: Path, bundle: Path, out: Path, *extra: str) -> dict[str, dict[str, Any]]:
    """`clip-rt classify` on one machine, in this process: the reference rows by absolute path."""
    r = CliRunner().invoke(
        main, ["classify", str(photos), "-o", str(out), "-l", LABELS, "-m", str(bundle), *extra], catch_exceptions=False
    )
    assert r.exit_code in (0, 1), r.output
    return {path_key(d["path"]): d for d in map(json.loads, out.read_text().splitlines())}


@pytest.fixture(scope="module")
def big_reference(big_photos: Path, bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return cli_classify(big_photos, bundle, tmp_path_factory.mktemp("ref") / "run.jsonl")


def rows_by_path(out: Path) -> dict[str, dict[str, Any]]:
    rows = parts.read_table(str(out)).to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "an input was written twice"
    return {r["path"]: r for r in rows}


def assert_same_as_cli(rows: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]]) -> None:
    assert set(rows) == set(reference)
    names = LABELS.split(",")
    for path, row in rows.items():
        want = reference[path]
        assert row["error"] == want["error"], path
        assert row["label"] == want["label"], path
        if want["error"] is None:  # the same graphs on onnxruntime everywhere (the nodes run as AVX2 CPUs)
            assert abs(row["score"] - want["score"]) <= 1e-6
            assert all(abs(s - want["scores"][k]) <= 1e-6 for k, s in zip(names, row["scores"]))


def footer_nodes(out: Path) -> dict[str, dict[str, Any]]:
    return parts.summarize(str(out)).nodes


# -- the pieces, without a cluster -------------------------------------------------------------
def put_here(value: Any) -> Any:
    return value  # a ShippedBundle whose "refs" are the files themselves (actors._get accepts both)


def test_ship_bundle_adds_the_fp32_graph_only_where_a_derived_mode_may_need_it(tmp_path: Path, bundle: Path) -> None:
    b = nncf_int8_bundle(tmp_path / "nncf")
    shipped = actors.ship_bundle(str(b), "int8", put_here)
    assert set(shipped.graph) == {"image_int8.onnx"}
    assert set(shipped.reference) == {"image_fp32.onnx"}  # the choice table has int8 (NNCF) in bf16
    assert actors.ship_bundle(str(b), "fp32", put_here).reference is None  # the check's reference is shipped
    plain = build_fake_bundle(tmp_path / "dynamic", precisions=("fp32", "int8"))  # legacy dynamic int8
    assert actors.ship_bundle(str(plain), "int8", put_here).reference is None  # no derived row for it
    assert actors.ship_bundle(str(bundle), "fp16", put_here).reference is None


def test_a_damaged_shipped_copy_is_written_again(tmp_path: Path, clip_home: Path, bundle: Path) -> None:
    shipped = actors.ship_bundle(str(bundle), "fp32", put_here)
    folder = Path(actors.materialise(shipped))
    assert folder.parent == clip_home / "ray-bundles" and (folder / "image_fp32.onnx").is_file()
    graph = folder / "image_fp32.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")  # same size, other content: a damaged disk
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = Path(actors.materialise(shipped))
    assert again == folder and graph.read_bytes() == (bundle / "image_fp32.onnx").read_bytes()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # nothing left aside


def test_an_unwritable_home_is_a_bundle_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("x")
    monkeypatch.setenv("CLIP_RT_HOME", str(home))
    with pytest.raises(BundleError, match="cannot write the shipped bundle to .*home-is-a-file.*writable folder"):
        actors.materialise(actors.ship_bundle(str(bundle), "fp32", put_here))


@pytest.mark.skipif(not HAVE_OV, reason="openvino not installed (pip install 'clip-rt[openvino]')")
def test_shipped_copy_without_the_reference_refuses_the_unchecked_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver whose choice table expects no derived mode ships no fp32 graph; a node that
    still chooses one says so, instead of a missing-file error from deep in the check."""
    from clip_rt.model import load
    from clip_rt.options import RuntimeOptions

    monkeypatch.setenv(ENV_FLAGS, AMX_FLAGS)
    b = nncf_int8_bundle(tmp_path / "nncf")
    shipped = actors.ship_bundle(str(b), "int8", put_here)
    folder = Path(actors.materialise(shipped))
    model = load(folder, options=RuntimeOptions(precision="int8", cache=False))
    assert model.plan.image.needs_evidence and model.plan.image.mode_label == "int8+bf16"
    bare = actors.ShippedBundle(shipped.fingerprint, "int8", shipped.manifest, shipped.graph, None)
    with pytest.raises(BundleError, match="checked against the fp32 image graph, which the driver did not ship"):
        actors.fetch_reference(bare, folder, model)
    actors.fetch_reference(shipped, folder, model)
    assert (folder / "image_fp32.onnx").read_bytes() == (b / "image_fp32.onnx").read_bytes()
    model.session("image")  # the check runs against it and passes
    assert not model.plan.image.needs_evidence and model.plan.image.mode_label == "int8+bf16"


def test_node_errors_survive_ray_wrapping_and_read_as_one_line() -> None:
    import pickle

    import ray.exceptions

    err = nodes.NodeError(
        "node 10.0.0.7 (id abc123): the model could not be loaded on this node: disk full", "10.0.0.7", "abc123"
    )
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.node_ip, again.node_id) == (str(err), "10.0.0.7", "abc123")
    wrapped = ray.exceptions.RayTaskError("submit", "Traceback ...", err).as_instanceof_cause()
    found = nodes.job_failure(wrapped)
    assert isinstance(found, nodes.NodeError) and found.node_id == "abc123"
    assert str(found).startswith("node 10.0.0.7 (id abc123): the model could not") and "\n" not in str(found)
    assert "rerun the same command to resume" in str(found)
    # A wrapper that kept only the text (Ray Data's "UDF failed" message with the cause's traceback).
    text = RuntimeError(
        "UDF failed\nTraceback (most recent call last):\n  File x\nclip_rt.scale.nodes.NodeError: "
        "node 10.0.0.8 (id def456): a batch of 4 images failed: MemoryError: \nmore"
    )
    found = nodes.job_failure(text)
    assert isinstance(found, nodes.NodeError) and (found.node_ip, found.node_id) == ("10.0.0.8", "def456")
    lost = nodes.job_failure(ray.exceptions.ActorDiedError())
    assert isinstance(lost, nodes.RayJobError) and "ActorDiedError" in str(lost) and "\n" not in str(lost)
    assert nodes.job_failure(KeyError("a bug on the driver")) is None  # keeps its traceback


def test_part_footers_count_rows_per_node(tmp_path: Path, bundle: Path) -> None:
    from clip_rt.bundle.manifest import read_manifest

    ident = parts.identity("embed", read_manifest(bundle), "fp32")
    parts.prepare_output(str(tmp_path), ident)
    schema = parts.schema(ident)
    for names, node in ((["a", "b"], "n1"), (["c"], "n2"), (["d"], None)):
        cols: dict[str, Any] = {k: pa.nulls(len(names), schema.field(k).type) for k in schema.names}
        cols["path"] = pa.array(names, pa.string())
        cols["error"] = pa.array(["bad"] + [None] * (len(names) - 1), pa.string())
        table = pa.Table.from_pydict(cols, schema=schema)
        counted = parts.count_nodes(["10.0.0.1"] * len(names), [node] * len(names), cols["error"].to_pylist())
        parts.write_part(str(tmp_path), table, counted if node else None)
    assert footer_nodes(tmp_path) == {
        "n1": {"ip": "10.0.0.1", "rows": 2, "failed": 1},
        "n2": {"ip": "10.0.0.1", "rows": 1, "failed": 1},
    }
    assert parts.read_table(str(tmp_path)).num_rows == 4  # the footers do not disturb reading


def test_sink_counts_nodes_into_footers_and_reports_an_unwritable_output(tmp_path: Path, bundle: Path) -> None:
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.errors import OutputError
    from clip_rt.scale.sink import PartsDatasink

    ident = parts.identity("embed", read_manifest(bundle), "fp32")
    schema = parts.schema(ident)
    cols: dict[str, Any] = {k: pa.nulls(3, schema.field(k).type) for k in schema.names}
    cols["path"] = pa.array(["a", "b", "c"], pa.string())
    cols["error"] = pa.array(["bad", None, None], pa.string())
    block = pa.Table.from_pydict(cols, schema=schema)
    block = block.append_column(parts.NODE_IP, pa.array(["10.0.0.1", "10.0.0.2", "10.0.0.2"]))
    block = block.append_column(parts.NODE_ID, pa.array(["n1", "n2", "n2"]))
    out = tmp_path / "out"
    parts.prepare_output(str(out), ident)
    written = PartsDatasink(str(out), 10).write([block], None)
    assert written is not None and written["nodes"] == {
        "n1": {"ip": "10.0.0.1", "rows": 1, "failed": 1},
        "n2": {"ip": "10.0.0.2", "rows": 2, "failed": 0},
    }
    table = parts.read_table(str(out))
    assert table.column_names == schema.names  # the node columns are not written
    assert footer_nodes(out) == written["nodes"]
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    with pytest.raises(OutputError, match="a-file: cannot write a part"):
        PartsDatasink(str(blocked), 10).write([block], None)


# -- the cluster -------------------------------------------------------------------------------
class LocalCluster:
    """A head node started at once, workers added and removed by the tests; every process it
    started (raylets, GCS, agents, workers) remembered, so that teardown can prove them gone."""

    def __init__(self, base: Path) -> None:
        from ray.cluster_utils import Cluster

        self.base = base
        self.homes: dict[str, Path] = {}
        self.nodes: dict[str, Any] = {}
        self.procs: dict[int, Any] = {}  # pid -> psutil.Process (which knows its start time: no pid reuse)
        head = {**self._args("head", {}), "num_cpus": 0, "include_dashboard": False}
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.nodes["head"] = self.cluster.head_node
        self._remember()

    def _args(self, name: str, env: dict[str, str]) -> dict[str, Any]:
        home = self.homes.setdefault(name, self.base / f"home-{name}")
        return {
            "num_cpus": 1,
            "object_store_memory": NODE_MB * 2**20,
            "node_ip_address": "127.0.0.1",
            "env_vars": {"CLIP_RT_HOME": str(home), **env},
        }

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add(self, name: str, *, env: Optional[dict[str, str]] = None, home: Optional[Path] = None) -> Any:
        if home is not None:
            self.homes[name] = home
        self.nodes[name] = self.cluster.add_node(**self._args(name, env or {}))
        self.cluster.wait_for_nodes()
        self._remember()
        return self.nodes[name]

    def remove(self, name: str) -> None:
        self._remember()
        self.cluster.remove_node(self.nodes.pop(name))

    def node_id(self, name: str) -> str:
        return str(self.nodes[name].node_id)

    def _remember(self) -> None:
        for node in self.nodes.values():
            for procs in node.all_processes.values():
                for info in procs:
                    try:
                        top = psutil.Process(info.process.pid)
                        for proc in [top, *top.children(recursive=True)]:
                            self.procs.setdefault(proc.pid, proc)
                    except psutil.NoSuchProcess:
                        pass

    def actors(self) -> list[str]:
        """The process titles of the job actors alive under this cluster's raylets."""
        self._remember()
        found = []
        for proc in list(self.procs.values()):
            try:
                title = (proc.cmdline() or [proc.name()])[0]
                if _alive(proc) and title.startswith("ray::MapWorker"):
                    found.append(title)
            except psutil.Error:
                continue
        return found

    def shutdown(self) -> list[int]:
        """Stop every node; returns the pids that were still alive 30 s later (then killed)."""
        self._remember()
        try:
            for name in [n for n in self.nodes if n != "head"]:
                self.remove(name)
            self.cluster.shutdown()
        finally:
            deadline = time.monotonic() + 30
            alive = [p for p in self.procs.values() if _alive(p)]
            while alive and time.monotonic() < deadline:
                time.sleep(0.2)
                alive = [p for p in alive if _alive(p)]
            for proc in alive:
                try:
                    if proc.is_running():  # the same process (its start time), not a reused pid
                        proc.kill()
                except psutil.Error:
                    pass
        return [p.pid for p in alive]


def _alive(proc: Any) -> bool:
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1
    try:
        local = LocalCluster(tmp_path_factory.mktemp("cluster"))
        try:
            yield local
        finally:
            left = local.shutdown()
            assert not left, f"Ray processes still alive 30 s after the cluster was shut down (killed): {left}"
    finally:
        if before is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = before


@pytest.fixture
def workers(cluster: LocalCluster) -> Iterator[Callable[..., Any]]:
    """``workers("w1", env=...)`` adds a worker node for this test; all are removed after it."""
    added: list[str] = []

    def add(name: str, **kw: Any) -> Any:
        added.append(name)
        return cluster.add(name, **kw)

    yield add
    for name in added:
        if name in cluster.nodes:
            cluster.remove(name)


def driver(args: list[str], home: Path, ledger: Optional[Path] = None) -> subprocess.Popen[str]:
    """The CLI as its own process (a driver of the cluster), in a session of its own. With a
    *ledger*: through bench.ray_cluster's LEDGER_DRIVER, which records the rows each node computes."""
    env = {**os.environ, "CLIP_RT_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "clip_rt"]
    if ledger is not None:
        script = ledger.with_suffix(".py")
        script.write_text(LEDGER_DRIVER)
        command = [sys.executable, str(script), str(ledger)]
    return subprocess.Popen(
        [*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finish(proc: subprocess.Popen[str], timeout: float = JOB_TIMEOUT_S) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, err


def run_cli(args: list[str], home: Path) -> tuple[int, str]:
    return finish(driver(args, home))


def job_args(photos: Path, out: Path, bundle: Path, cluster: LocalCluster, *extra: str) -> list[str]:
    return [
        "ray",
        "classify",
        str(photos),
        "-o",
        str(out),
        "-m",
        str(bundle),
        "-l",
        LABELS,
        "--address",
        cluster.address,
        "--ship-bundle",
        *extra,
    ]


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {what}: rc {proc.returncode}\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def finished(out: Path) -> int:
    return len(parts.finished_parts(str(out))) if out.is_dir() else 0


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_worker_node_lost_mid_job(
    cluster: LocalCluster,
    workers: Callable[..., Any],
    bundle: Path,
    big_photos: Path,
    big_reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    for name in ("w1", "w2", "w3"):  # two actors, and a free CPU for the one that is lost
        workers(name)
    out = tmp_path / "out"
    ledger = tmp_path / "ledger"
    args = job_args(big_photos, out, bundle, cluster, "--actors", "2", "--part-rows", "4")
    total = len(big_reference)
    proc = driver(args, tmp_path / "drv", ledger)
    try:
        # The node to lose: one that has computed a few batches, while most of the job is left.
        def busy() -> bool:
            done = read_ledger(ledger)
            return max(done.values(), default=0) >= 8 and sum(done.values()) < total // 2

        wait_for(busy, proc, "a worker with a few batches computed")
        computed = read_ledger(ledger)
        lost_id = max(computed, key=lambda k: computed[k])
        lost = next(name for name in ("w1", "w2", "w3") if cluster.node_id(name) == lost_id)
        cluster.remove(lost)
        assert proc.poll() is None, "the job ended before the node was lost"
        rc, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    no_traceback(err)
    if rc == 1 and "Error:" in err:  # Ray could not redo the lost work: one line, then the rerun finishes it
        assert len([line for line in err.splitlines() if line.startswith("Error:")]) == 1
        assert "rerun the same command to resume" in err
        rc, err = finish(driver(args, tmp_path / "drv", ledger))
        no_traceback(err)
    assert rc == 1, err  # the broken photo: exit 1, as `clip-rt classify`
    assert f"{total} images in" in err and "1 failed" in err
    assert_same_as_cli(rows_by_path(out), big_reference)
    written = footer_nodes(out)
    assert sum(n["rows"] for n in written.values()) == total
    assert all(n["ip"] == "127.0.0.1" for n in written.values())
    # What the lost node computed and did not hand over was computed again elsewhere.
    computed = read_ledger(ledger)
    assert sum(computed.values()) >= total
    assert computed[lost_id] >= written.get(lost_id, {"rows": 0})["rows"]


@pytest.mark.slow
def test_driver_killed_mid_job(
    cluster: LocalCluster,
    workers: Callable[..., Any],
    bundle: Path,
    big_photos: Path,
    big_reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    workers("w1")
    workers("w2")
    out = tmp_path / "out"
    args = job_args(big_photos, out, bundle, cluster, "--actors", "2", "--part-rows", "4")
    proc = driver(args, tmp_path / "drv")
    try:
        wait_for(lambda: finished(out) >= 2, proc, "two finished parts")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it spawned
        proc.communicate(timeout=60)
    kept = {p.name for p in parts.finished_parts(str(out))}
    done = len(parts.read_table(str(out)))
    assert 2 <= len(kept) and done < len(big_reference)
    # Ray ends a dead driver's job: its actors go away on every node.
    deadline = time.monotonic() + 60
    while cluster.actors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not cluster.actors(), "the killed driver's actors live on"
    rc, err = run_cli(args, tmp_path / "drv")
    no_traceback(err)
    assert rc == 1 and f"({len(big_reference) - done} new, {done} already done)" in err, err
    assert kept <= {p.name for p in parts.finished_parts(str(out))}  # finished parts were kept, not redone
    assert not [p for p in out.iterdir() if parts.TMP_MARK in p.name]
    assert_same_as_cli(rows_by_path(out), big_reference)
    assert sum(n["rows"] for n in footer_nodes(out).values()) == len(big_reference)


@pytest.mark.slow
def test_node_that_cannot_load_the_model_fails_the_job_in_one_line(
    cluster: LocalCluster, workers: Callable[..., Any], bundle: Path, tmp_path: Path
) -> None:
    photos = small_photos(tmp_path / "photos", 24)
    bad_home = tmp_path / "home-is-a-file"
    bad_home.write_text("this node's CLIP_RT_HOME is not a folder")
    workers("w1")
    workers("broken", home=bad_home)
    out = tmp_path / "out"
    # Two actors on two one-CPU workers: one of them on the broken node.
    rc, err = run_cli(job_args(photos, out, bundle, cluster, "--actors", "2", "--part-rows", "2"), tmp_path / "drv")
    no_traceback(err)
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert rc == 1 and len(errors) == 1, err
    line = errors[0]
    assert f"node 127.0.0.1 (id {cluster.node_id('broken')})" in line
    assert "cannot write the shipped bundle" in line and "home-is-a-file" in line and "Not a directory" in line
    assert "rerun the same command to resume" in line
    # Take the node out and rerun: the job resumes and completes.
    cluster.remove("broken")
    rc, err = run_cli(job_args(photos, out, bundle, cluster, "--actors", "1", "--part-rows", "2"), tmp_path / "drv")
    no_traceback(err)
    assert rc == 0 and "24 images in" in err, err
    assert set(rows_by_path(out)) == {path_key(str(p)) for p in photos.iterdir()}


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_OV, reason="openvino not installed (pip install 'clip-rt[openvino]')")
def test_shipped_int8_bundle_runs_its_checked_bf16_mode_on_an_amx_node(
    cluster: LocalCluster, workers: Callable[..., Any], tmp_path: Path
) -> None:
    """The failure this fixes: the shipped copy had no fp32 graph, and the AMX node's check of
    int8+bf16 stopped the job with a missing-file error."""
    from clip_rt.model import load

    b = nncf_int8_bundle(tmp_path / "nncf")
    photos = small_photos(tmp_path / "photos", 16)
    reference = cli_classify(photos, b, tmp_path / "ref.jsonl", "--precision", "int8")  # onnxruntime int8 (AVX2)
    workers("amx", env={ENV_FLAGS: AMX_FLAGS})
    out = tmp_path / "out"
    args = job_args(photos, out, b, cluster, "--part-rows", "4", "--precision", "int8")
    rc, err = run_cli([*args, "--actors", "1"], tmp_path / "drv")  # the AMX node is the only one with a CPU
    no_traceback(err)
    assert rc == 0 and "16 images in" in err, err
    tag = f"{json.loads((b / 'manifest.json').read_text())['fingerprint'][:24]}-int8"
    assert (cluster.homes["amx"] / "ray-bundles" / tag / "image_fp32.onnx").is_file()  # fetched: its mode needed it
    ((key, record),) = json.loads((cluster.homes["amx"] / "cache" / "derived_parity.json").read_text()).items()
    assert ":image:openvino-" in key and ":int8+bf16:x86-amx" in key and record["passed"]
    assert record["gate"] == {"min_cosine": 0.99} and not record.get("cached")
    assert footer_nodes(out) == {cluster.node_id("amx"): {"ip": "127.0.0.1", "rows": 16, "failed": 0}}
    # Every row against onnxruntime's int8 on this machine: within the gate the check applied.
    model = load(b, precision="int8", cache=False)
    files = sorted(photos.iterdir())
    want = {path_key(str(p)): e for p, e in zip(files, model.encode_image(files))}
    rows = rows_by_path(out)
    assert rows.keys() == want.keys() == reference.keys()
    for path, row in rows.items():
        assert float(np.asarray(row["embedding"], np.float32) @ want[path]) >= 0.99, path  # both unit length
        ranked = sorted(reference[path]["scores"].values(), reverse=True)
        if ranked[0] - ranked[1] > 0.2:  # not a near tie: the same label
            assert row["label"] == reference[path]["label"], path
    # An AVX2 node beside it runs onnxruntime's int8, unchecked: it never fetches the fp32 graph.
    workers("avx2")
    rc, err = run_cli([*args, "--actors", "2", "--overwrite"], tmp_path / "drv")
    no_traceback(err)
    assert rc == 0 and "16 images in" in err, err
    assert (cluster.homes["avx2"] / "ray-bundles" / tag / "image_int8.onnx").is_file()
    assert not (cluster.homes["avx2"] / "ray-bundles" / tag / "image_fp32.onnx").exists()
    assert not (cluster.homes["avx2"] / "cache" / "derived_parity.json").exists()
