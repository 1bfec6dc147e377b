"""``python -m bench.ray_cluster --bundle DIR``: ``clip-rt ray classify --ship-bundle`` on a
multi-node Ray cluster on this machine, and what a lost node and a killed driver cost.

The cluster is Ray's own test cluster (``ray.cluster_utils.Cluster``): a head node without CPUs
(the driver attaches there and the parts are written there) and three one-CPU worker nodes, each
its own raylet on 127.0.0.1 with its own object store and ``CLIP_RT_HOME``. Every job runs two
actors (the third worker is the spare a lost actor restarts on) and is driven by the CLI in a
process of its own, through :data:`LEDGER_DRIVER`: the CLI, with the actors' class wrapped so
that each batch computed appends a line (node id, rows) to a ledger file. The ledger counts
work that never reaches the output (a lost node's results), which the output cannot show.

Runs, each into a new output folder, checked against ``clip-rt classify`` on the same photos
(every input exactly once; labels and scores):

- a warm-up job on the three workers first (each gets the shipped bundle and compiles its
  model once, as the nodes of a cluster that has run a job have), not compared;
- ``baseline``: nothing fails.
- ``node_lost``: once a third of the rows are computed, the worker with the most rows computed
  is removed (all its processes killed); the job's outcome, then a rerun if it failed.
- ``driver_killed``: the driver is killed (SIGKILL) when half the rows are computed, then the
  same command is run again.

Per run: wall time, rows computed per node (ledger) and rows written per node (the parts'
footers), rows computed more than once (all computed - inputs), the outcome. Results:
bench/results/ray_cluster.json (with the machine's ISA, bench/common.py). The machine is shared:
the rows redone are the figure to read; times are as measured, under the load recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .common import WORK_DIR, log, write_result

# The CLI with the actors' class wrapped to keep a ledger of the rows each node computed. Run as
# a script (__main__), so Ray ships the wrapper class by value to the workers. argv: LEDGER, then
# the CLI's arguments.
LEDGER_DRIVER = '''
import json, os, sys, time
from clip_rt.cli import main
from clip_rt.scale import actors


class LedgerRows(actors.ImageRows):
    """ImageRows that appends one line per batch computed: node id, rows, time."""

    ledger = sys.argv[1]

    def __call__(self, batch):
        out = super().__call__(batch)
        import ray

        line = json.dumps({"node": ray.get_runtime_context().get_node_id(), "rows": len(batch["path"]),
                           "t": time.time()}) + "\\n"
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one short O_APPEND write: whole lines from every node
        finally:
            os.close(fd)
        return out


actors.ImageRows = LedgerRows
main(sys.argv[2:], prog_name="clip-rt")
'''


def read_ledger(path: Path) -> dict[str, int]:
    """Rows computed per node id."""
    rows: dict[str, int] = {}
    for entry in ledger_entries(path):
        rows[entry["node"]] = rows.get(entry["node"], 0) + int(entry["rows"])
    return rows


def ledger_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Driver:
    """One ``clip-rt ray classify`` driver process with its ledger."""

    def __init__(self, script: Path, ledger: Path, args: list[str], home: Path) -> None:
        env = {**os.environ, "CLIP_RT_HOME": str(home)}
        env.pop("RAY_ADDRESS", None)
        self.ledger = ledger
        self.t0 = time.perf_counter()
        self.started = time.time()  # the ledger's clock
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(ledger), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def computed(self) -> dict[str, int]:
        return read_ledger(self.ledger)

    def first_batch_s(self) -> Optional[float]:
        """Seconds from this driver's start to the first batch any node computed for it."""
        times = [e["t"] for e in ledger_entries(self.ledger) if e["t"] >= self.started]
        return round(min(times) - self.started, 1) if times else None

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 900) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return time.perf_counter() - self.t0
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the job ended before {what}: rc {self.proc.returncode}\n{self.proc.communicate()[1][-3000:]}"
                )
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"timed out waiting for {what}")

    def finish(self, timeout: float = 1800) -> tuple[int, str, float]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode, err, time.perf_counter() - self.t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()


class BenchCluster:
    """Head (no CPUs) + one-CPU workers, each with its own home; torn down by :meth:`shutdown`."""

    def __init__(self, base: Path, *, head_mb: int, worker_mb: int) -> None:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray.cluster_utils import Cluster

        self.base = base
        self.worker_mb = worker_mb
        self.nodes: dict[str, Any] = {}
        self.homes: dict[str, Path] = {}
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "object_store_memory": head_mb * 2**20,
                "node_ip_address": "127.0.0.1",
                "include_dashboard": False,
                "env_vars": {"CLIP_RT_HOME": str(self._home("head"))},
            },
        )
        self.nodes["head"] = self.cluster.head_node
        self.added = 0

    def _home(self, name: str) -> Path:
        return self.homes.setdefault(name, self.base / f"home-{name}")

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_worker(self) -> str:
        self.added += 1
        name = f"w{self.added}"
        self.nodes[name] = self.cluster.add_node(
            num_cpus=1,
            object_store_memory=self.worker_mb * 2**20,
            node_ip_address="127.0.0.1",
            env_vars={"CLIP_RT_HOME": str(self._home(name))},
        )
        self.cluster.wait_for_nodes()
        return name

    def name_of(self, node_id: str) -> Optional[str]:
        return next((n for n, node in self.nodes.items() if node.node_id == node_id), None)

    def remove(self, name: str) -> None:
        self.cluster.remove_node(self.nodes.pop(name))

    def shutdown(self) -> None:
        for name in [n for n in self.nodes if n != "head"]:
            self.remove(name)
        self.cluster.shutdown()


# -- checks against the single-machine CLI ---------------------------------------------------------
def reference(photos: Path, bundle: str, labels: str, work: Path) -> dict[str, dict[str, Any]]:
    from clip_rt.inputs.discover import path_key

    out = work / "reference.jsonl"
    if not out.exists():
        exe = Path(sys.executable).with_name("clip-rt")
        r = subprocess.run(
            [str(exe), "classify", str(photos), "-o", str(out), "-l", labels, "-m", bundle],
            env={**os.environ, "CLIP_RT_HOME": str(work / "home-reference")},
            capture_output=True,
            text=True,
        )
        if r.returncode not in (0, 1):
            raise RuntimeError(f"clip-rt classify failed: {r.stderr[-2000:]}")
    return {path_key(d["path"]): d for d in map(json.loads, out.read_text().splitlines())}


def check_output(out: Path, ref: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every input exactly once; labels and scores against ``clip-rt classify``."""
    from clip_rt.scale import parts

    rows = parts.read_table(str(out), ["path", "label", "score", "error"]).to_pylist()
    paths = [r["path"] for r in rows]
    labels_same = near_ties = 0
    worst = 0.0
    for r in rows:
        want = ref.get(r["path"])
        if want is None or r["error"] is not None:
            continue
        ranked = sorted(want["scores"].values(), reverse=True)
        worst = max(worst, abs(r["score"] - want["score"]) if r["label"] == want["label"] else 0.0)
        if r["label"] == want["label"]:
            labels_same += 1
        elif ranked[0] - ranked[1] < 0.05:
            near_ties += 1
    ok = sum(1 for w in ref.values() if w["error"] is None)
    return {
        "rows": len(rows),
        "unique_paths": len(set(paths)),
        "inputs": len(ref),
        "exactly_once": len(paths) == len(set(paths)) and set(paths) == set(ref),
        "labels_same_as_cli": labels_same,
        "labels_compared": ok,
        "label_differences_at_near_ties": near_ties,
        "max_abs_score_diff_same_label": round(worst, 6),
    }


def node_rows(out: Path, cluster: BenchCluster, computed: dict[str, int]) -> dict[str, Any]:
    """Per node: rows written (the parts' footers) and rows computed (the ledger)."""
    from clip_rt.scale import parts

    written = parts.summarize(str(out)).nodes
    result = {}
    for node_id in sorted(set(written) | set(computed)):
        result[node_id[:12]] = {
            "node": cluster.name_of(node_id) or "removed",
            "rows_written": written.get(node_id, {}).get("rows", 0),
            "rows_computed": computed.get(node_id, 0),
        }
    return result


# -- the runs ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from clip_rt_fixtures.photos import LABELS, make_jpegs

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    photos = work / "photos"
    make_jpegs(photos, args.images, megapixels=0.5, seed=0)
    labels = ",".join(LABELS)
    log(f"{args.images} photos; the reference `clip-rt classify`")
    ref = reference(photos, args.bundle, labels, work)
    script = work / "ledger_driver.py"
    script.write_text(LEDGER_DRIVER)
    base = Path(tempfile.mkdtemp(prefix="cluster-", dir=work))
    t0 = time.perf_counter()
    cluster = BenchCluster(base, head_mb=args.head_mb, worker_mb=args.worker_mb)
    result: dict[str, Any] = {
        "images": len(ref),
        "bundle": Path(args.bundle).name,
        "part_rows": args.part_rows,
        "actors": 2,
        "labels": len(LABELS),
        "shipped": shipped(args.bundle),
    }
    try:
        for _ in range(3):
            cluster.add_worker()
        result["cluster"] = {
            "head": {"cpus": 0, "object_store_mb": args.head_mb},
            "workers": {"count": 3, "cpus_each": 1, "object_store_mb_each": args.worker_mb},
            "start_s": round(time.perf_counter() - t0, 1),
        }
        # Every worker gets the shipped bundle and its compiled model once, as a cluster that has
        # run a job has: the runs below then compare like with like (a new node is cold, as in life).
        log("warm-up job on the three workers")
        warm = Driver(
            script,
            base / "ledger-warmup",
            [
                "ray",
                "classify",
                str(photos),
                "-o",
                str(base / "out-warmup"),
                "-m",
                args.bundle,
                "-l",
                labels,
                "--address",
                cluster.address,
                "--ship-bundle",
                "--actors",
                "3",
            ],
            base / "home-driver",
        )
        rc, err, wall = warm.finish()
        result["warmup"] = {"outcome": _outcome(rc, err), "wall_s": round(wall, 1), "actors": 3}
        runs = {}
        for name, scenario in (("baseline", baseline), ("node_lost", node_lost), ("driver_killed", driver_killed)):
            log(f"run {name}")
            out = base / f"out-{name}"
            job = [
                "ray",
                "classify",
                str(photos),
                "-o",
                str(out),
                "-m",
                args.bundle,
                "-l",
                labels,
                "--address",
                cluster.address,
                "--ship-bundle",
                "--actors",
                "2",
                "--part-rows",
                str(args.part_rows),
            ]
            runs[name] = scenario(cluster, script, job, base / f"ledger-{name}", base / "home-driver")
            runs[name]["output"] = check_output(out, ref)
            runs[name]["nodes"] = node_rows(out, cluster, runs[name].pop("_computed"))
            while len([n for n in cluster.nodes if n != "head"]) < 3:  # a spare again for the next run
                cluster.add_worker()
            log(f"{name}: {json.dumps(runs[name])}")
        result["runs"] = runs
        base_wall = runs["baseline"]["wall_s"]
        for name in ("node_lost", "driver_killed"):
            r = runs[name]
            r["extra_wall_s_vs_baseline"] = round(r["wall_s"] - base_wall, 1)
    finally:
        cluster.shutdown()
        shutil.rmtree(base, ignore_errors=True)
    return result


def shipped(bundle: str) -> dict[str, Any]:
    """What --ship-bundle puts into the object store for this bundle's default precision."""
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.engine.session import CPU
    from clip_rt.model import default_precision
    from clip_rt.scale.actors import derived_mode_possible, graph_files

    manifest = read_manifest(Path(bundle))
    precision = default_precision(manifest, CPU)

    def mb(names: list[str]) -> float:
        return round(sum((Path(bundle) / n).stat().st_size for n in names) / 2**20, 1)

    reference = derived_mode_possible(manifest, precision)
    return {
        "precision": precision,
        "graph_mb": mb(graph_files(manifest, precision)),
        "fp32_reference_mb": mb(graph_files(manifest, "fp32")) if reference else 0.0,
    }


def _outcome(rc: int, err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    return errors[0][:300] if errors else f"completed (exit {rc})"


def baseline(cluster: BenchCluster, script: Path, job: list[str], ledger: Path, home: Path) -> dict[str, Any]:
    d = Driver(script, ledger, job, home)
    rc, err, wall = d.finish()
    computed = d.computed()
    return {
        "outcome": _outcome(rc, err),
        "wall_s": round(wall, 1),
        "first_batch_s": d.first_batch_s(),
        "rows_computed": sum(computed.values()),
        "_computed": computed,
    }


def node_lost(cluster: BenchCluster, script: Path, job: list[str], ledger: Path, home: Path) -> dict[str, Any]:
    d = Driver(script, ledger, job, home)
    inputs = _count_inputs(job)

    def ready() -> bool:  # a third of the job done, most of it left
        return inputs // 3 <= sum(d.computed().values()) < inputs // 2

    at = d.wait_until(ready, "a third of the rows computed")
    computed_then = d.computed()
    victim_id = max(computed_then, key=lambda k: computed_then[k])
    victim = cluster.name_of(victim_id)
    assert victim is not None and victim != "head"
    removed = time.time()
    cluster.remove(victim)
    log(f"removed {victim} at {at:.1f} s, {sum(computed_then.values())} of {inputs} rows computed")
    rc, err, wall = d.finish()
    # The lost actor's replacement: the first batch of a node that had computed none before.
    fresh = [e["t"] for e in ledger_entries(ledger) if e["t"] >= removed and e["node"] not in computed_then]
    result: dict[str, Any] = {
        "first_batch_s": d.first_batch_s(),
        "removed_at_s": round(at, 1),
        "rows_computed_when_removed": sum(computed_then.values()),
        "removed_node_rows_computed_before": computed_then[victim_id],
        "replacement_first_batch_s_after_removal": round(min(fresh) - removed, 1) if fresh else None,
        "first_run": _outcome(rc, err),
        "first_run_wall_s": round(wall, 1),
    }
    computed = d.computed()
    if "Error:" in err:
        again = Driver(script, ledger, job, home)
        rc2, err2, wall2 = again.finish()
        result["rerun"] = _outcome(rc2, err2)
        result["rerun_wall_s"] = round(wall2, 1)
        wall += wall2
        computed = again.computed()  # the same ledger: both runs
    result.update(
        {
            "outcome": result["first_run"],
            "wall_s": round(wall, 1),
            "rows_computed": sum(computed.values()),
            "rows_computed_twice": sum(computed.values()) - inputs,
            "_computed": computed,
        }
    )
    return result


def driver_killed(cluster: BenchCluster, script: Path, job: list[str], ledger: Path, home: Path) -> dict[str, Any]:
    from clip_rt.scale import parts

    out = Path(job[job.index("-o") + 1])
    inputs = _count_inputs(job)
    d = Driver(script, ledger, job, home)
    at = d.wait_until(lambda: sum(d.computed().values()) >= inputs // 2, "half the rows computed")
    d.kill()
    computed_then = sum(d.computed().values())
    written = len(parts.read_table(str(out), ["path"])) if out.is_dir() else 0
    log(f"killed the driver at {at:.1f} s: {computed_then} rows computed, {written} in finished parts")
    again = Driver(script, ledger, job, home)
    rc, err, wall = again.finish()
    computed = again.computed()
    return {
        "first_batch_s": d.first_batch_s(),
        "rerun_first_batch_s": again.first_batch_s(),
        "killed_at_s": round(at, 1),
        "rows_computed_when_killed": computed_then,
        "rows_in_finished_parts_when_killed": written,
        "outcome": _outcome(rc, err),
        "rerun_wall_s": round(wall, 1),
        "wall_s": round(at + wall, 1),
        "rows_computed": sum(computed.values()),
        "rows_computed_twice": sum(computed.values()) - inputs,
        "_computed": computed,
    }


def _count_inputs(job: list[str]) -> int:
    from clip_rt.scale.ray import local_rows

    return len(local_rows([job[2]]))


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ray_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle directory (e.g. a ViT-B-32 int8 bundle)")
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--part-rows", type=int, default=8)
    p.add_argument("--head-mb", type=int, default=600, help="the head's object store (the shipped graphs live there)")
    p.add_argument("--worker-mb", type=int, default=200)
    p.add_argument("--work-dir", type=Path, default=WORK_DIR / "ray_cluster")
    args = p.parse_args(argv)
    result = run(args)
    log(f"wrote {write_result('ray_cluster', result)}")


if __name__ == "__main__":
    main()
