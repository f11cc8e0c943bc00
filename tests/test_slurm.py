"""The workflow on a real SLURM: tests/slurm/cluster.sh installs (apt-get) and starts a one-node
SLURM 22.05 with two fake GPUs, the test preset runs through profiles/slurm (with the few keys of
tests/slurm/overlay.yaml changed for this cluster), and the test checks that every job ran as a
SLURM job with the resources its rule declares, that GPU rules were granted a GPU, and that the
outputs are those of a local run, byte for byte. The daemons it started are stopped, by pid.

Where SLURM cannot be installed or started (no root, no apt, ports taken, a real SLURM config
present) the tests are skipped with the reason (`pytest -ra` lists it); PETIQ_REQUIRE_SLURM=1 turns
that skip into a failure. Every call has a time limit: a wedged daemon fails the test, never hangs it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import workflow_runs as runs  # noqa: E402
from make_profile import make_profile  # noqa: E402

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
STATE = Path(os.environ.get("PETIQ_SLURM_DIR", "/tmp/petiq-slurm"))
REQUIRE = os.environ.get("PETIQ_REQUIRE_SLURM") == "1"
START_TIMEOUT = 900  # s, apt-get update + install on a fresh machine included
SLURM_RUN_TIMEOUT = 900  # s; the targets take ~2.5 min through SLURM on the 2-core development machine
CLIENT_TIMEOUT = 30  # s, one sbatch/srun/scontrol call


def unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"PETIQ_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def session_lock(path: Path, wait_s: float):
    """One test session at a time uses the test cluster (others on this machine wait, bounded)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    unavailable(f"another test session has used the test SLURM ({path}) for more than {wait_s:.0f} s")
                time.sleep(2)
        yield
    finally:
        os.close(fd)


class Cluster:
    def __init__(self, conf: str):
        self.env = runs.env(SLURM_CONF=conf)
        self.conf = conf

    def call(self, *args: str, timeout: float = CLIENT_TIMEOUT) -> runs.Done:
        return runs.run(["timeout", "-k", "5", str(timeout), *args], timeout=timeout + 10, env=self.env)

    def job(self, slurm_id: str) -> dict:
        """`scontrol -d show job` as a dict (finished jobs stay visible: MinJobAge=3600)."""
        done = self.call("scontrol", "-d", "-o", "show", "job", slurm_id)
        assert done.returncode == 0, done.tail()
        return dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", done.output))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        unavailable(
            "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]' installs the pinned one)"
        )
    if not sys.platform.startswith("linux"):
        unavailable(f"the test SLURM needs Linux, not {sys.platform}")
    STATE.parent.mkdir(parents=True, exist_ok=True)
    with session_lock(Path(f"{STATE}.session.lock"), wait_s=900):
        try:
            done = runs.run(["bash", str(CLUSTER), "start"], timeout=START_TIMEOUT)
        except AssertionError:  # timed out: stop whatever it had started (recorded pids), then fail
            runs.run(["bash", str(CLUSTER), "stop"], timeout=120)
            raise
        reason = done.output.strip().splitlines()[-1] if done.output.strip() else "no output"
        if done.returncode == 2:
            unavailable(f"SLURM cannot be installed here: {reason}")
        if done.returncode == 3:
            unavailable(f"SLURM cannot be started here: {reason}")
        assert done.returncode == 0, f"tests/slurm/cluster.sh start failed:\n{done.tail()}"
        values = dict(re.findall(r"^(SLURM_CONF|STARTED)=(.*)$", done.output, flags=re.M))
        try:
            yield Cluster(values["SLURM_CONF"])
        finally:
            if values.get("STARTED") == "1":  # only what this test started
                stop = runs.run(["bash", str(CLUSTER), "stop"], timeout=120)
                if stop.returncode != 0:
                    warnings.warn(f"tests/slurm/cluster.sh stop failed:\n{stop.tail()}", stacklevel=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, anatomy_dir):
    return runs.reference_run(tmp_path_factory.getbasetemp() / "petiq-reference", anatomy_dir)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory, anatomy_dir):
    """The test preset through profiles/slurm (+ tests/slurm/overlay.yaml), for the targets that
    the local reference run makes (workflow_runs.targets(): every stage, ~25 jobs)."""
    base = tmp_path_factory.mktemp("slurm-run")
    profile = make_profile(base / "profile")
    workdir = runs.make_workdir(base / "work", anatomy_dir)
    done = runs.run(
        runs.snakemake_cmd(workdir, "--profile", str(profile), *runs.targets()),
        timeout=SLURM_RUN_TIMEOUT,
        log=base / "snakemake.log",
        env=slurm.env,
    )
    assert done.returncode == 0, f"the workflow failed on SLURM:\n{done.tail()}\n{slurm_logs_tail(workdir)}"
    run_id = re.search(r"^SLURM run ID: (\S+)", done.output, flags=re.M)
    assert run_id, done.tail()
    print(f"SLURM run of the test preset: {done.seconds:.0f} s")
    return workdir, done, run_id.group(1), yaml.safe_load((profile / "config.yaml").read_text())


def slurm_logs_tail(workdir: Path) -> str:
    logs = sorted((workdir / "logs" / "slurm").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-3:]
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in logs)


def minutes(limit: str) -> int:
    """SLURM TimeLimit ([D-]HH:MM:SS) in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def megabytes(size: str) -> int:
    """SLURM memory (8000M, 3G, 1T) in MB."""
    return round(float(size[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[size[-1]])


def unquote(value) -> str:
    return str(value).strip("'\"")


# --- without a cluster ------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["workstation", "slurm"])
def test_profile_dry_run(profile, tmp_path, anatomy_dir):
    """Both profiles parse and give every job the resources a scheduler needs."""
    if profile == "slurm" and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        unavailable("snakemake-executor-plugin-slurm is not installed")
    workdir = runs.make_workdir(tmp_path, anatomy_dir)
    done = runs.run(
        runs.snakemake_cmd(workdir, "-n", "--profile", str(ROOT / "profiles" / profile)), timeout=300, env=runs.env()
    )
    assert done.returncode == 0, done.tail()
    jobs = [j for j in runs.parse_jobs(done.output) if j.outputs]
    assert jobs, done.tail()
    if profile == "slurm":
        settings = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
        for job in jobs:
            expected = {**settings["default-resources"], **settings["set-resources"].get(job.rule, {})}
            assert job.resources["slurm_partition"] == unquote(expected["slurm_partition"]), job
            assert job.resources["slurm_account"] == unquote(expected["slurm_account"]), job
            assert int(job.resources["runtime"]) > 0 and int(job.resources["mem_mb"]) > 0, job


# --- the cluster itself -------------------------------------------------------------------------------
def test_slurm_grants_fake_gpus(slurm):
    """The test cluster really counts GPUs: --gpus=1 gets one (CUDA_VISIBLE_DEVICES set), a job
    without --gpus gets none, and a third GPU is refused."""
    env = {k: v for k, v in slurm.env.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")}
    gpu = runs.run(
        ["timeout", "-k", "5", "60", "srun", "-p", "gpu", "--gpus=1", "--mem=100", "-t", "1", "env"],
        timeout=70,
        env=env,
    )
    assert gpu.returncode == 0, gpu.tail()
    granted = dict(line.split("=", 1) for line in gpu.output.splitlines() if "=" in line)
    assert granted.get("CUDA_VISIBLE_DEVICES") in {"0", "1"}, gpu.tail()
    assert granted.get("SLURM_GPUS_ON_NODE") == "1", gpu.tail()
    record = slurm.job(granted["SLURM_JOB_ID"])
    assert record["TresPerJob"] == "gres:gpu:1" and record["JOB_GRES"].startswith("gpu:fake:1"), record
    cpu = runs.run(["timeout", "-k", "5", "60", "srun", "--mem=100", "-t", "1", "env"], timeout=70, env=env)
    assert cpu.returncode == 0 and "SLURM_JOB_ID=" in cpu.output, cpu.tail()
    assert "CUDA_VISIBLE_DEVICES" not in cpu.output, cpu.tail()
    three = runs.run(
        ["timeout", "-k", "5", "60", "sbatch", "--gpus=3", "--mem=100", "-t", "1", "--wrap", "true"],
        timeout=70,
        env=env,
    )
    assert three.returncode != 0 and "not available" in three.output, three.tail()


# --- the workflow through profiles/slurm ----------------------------------------------------------------
def test_every_job_ran_as_a_slurm_job(slurm, slurm_run):
    """Each job that makes files was one SLURM job of this run (job name = the run ID), finished
    COMPLETED with exit 0, with its rule's CPUs, memory, time limit and partition, and left its log."""
    workdir, done, run_id, profile = slurm_run
    jobs = runs.parse_jobs(done.output)
    submitted = runs.submissions(done.output)
    assert jobs and submitted, done.tail()
    local = [j for j in jobs if j.local]
    assert all(not j.outputs for j in local), (
        f"jobs that make files ran outside SLURM: {[j.key for j in local if j.outputs]}"
    )
    remote = [j for j in jobs if not j.local]
    assert {j.jobid for j in remote} == set(submitted), "a job without a SLURM submission, or the reverse"
    for job in remote:
        slurm_id, log = submitted[job.jobid]
        record = slurm.job(slurm_id)
        where = f"{job.key} (SLURM job {slurm_id})"
        assert record["JobName"] == run_id, where
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", (
            where,
            record["JobState"],
            record["ExitCode"],
        )
        assert record["Comment"].split("_wildcards_")[0] == f"rule_{job.rule}", (where, record["Comment"])
        assert record["Partition"] == job.resources["slurm_partition"], where
        assert megabytes(record["MinMemoryNode"]) == int(job.resources["mem_mb"]), (where, record["MinMemoryNode"])
        assert minutes(record["TimeLimit"]) == int(job.resources["runtime"]), (where, record["TimeLimit"])
        if not job.gpus():
            assert int(record["NumCPUs"]) == job.threads, (where, record["NumCPUs"], job.threads)
        assert Path(log).is_file() and Path(log).is_relative_to(workdir / profile["slurm-logdir"]), (where, log)
    n_jobs = runs.run(
        ["timeout", "-k", "5", "30", "squeue", "-h", "-t", "all", "-n", run_id, "-o", "%i"], timeout=40, env=slurm.env
    )
    assert len(n_jobs.output.split()) == len(remote), (
        f"SLURM ran {len(n_jobs.output.split())} jobs for {len(remote)} (retries?)"
    )


def test_gpu_rules_were_granted_a_gpu(slurm, slurm_run):
    """Jobs of rules that declare gpu>0 asked SLURM for that many GPUs and got them, on the GPU
    partition of the profile. Data-driven: the rules of this run that declare a GPU."""
    workdir, done, run_id, profile = slurm_run
    submitted = runs.submissions(done.output)
    gpu_jobs = [j for j in runs.parse_jobs(done.output) if not j.local and j.gpus()]
    if not gpu_jobs:
        rules = sorted({j.rule for j in runs.parse_jobs(done.output)})
        warnings.warn(
            f"no rule of this run declares gpu>0 (rules: {', '.join(rules)}); only "
            "test_slurm_grants_fake_gpus shows that SLURM grants GPUs here",
            stacklevel=2,
        )
        return
    for job in gpu_jobs:
        record = slurm.job(submitted[job.jobid][0])
        assert record["TresPerJob"].endswith(f"gpu:{job.gpus()}"), (job.key, record["TresPerJob"])
        assert record["JOB_GRES"].startswith(f"gpu:fake:{job.gpus()}"), (job.key, record["JOB_GRES"])
        expected = profile["set-resources"].get(job.rule, {}).get("slurm_partition")
        if expected:
            assert record["Partition"] == unquote(expected), (job.key, record["Partition"])


def test_outputs_match_a_local_run(slurm_run, reference):
    """The same files as the local run of the same preset, byte for byte (figures: present)."""
    workdir = slurm_run[0]
    assert runs.compare_outputs(reference[0], workdir) == []
