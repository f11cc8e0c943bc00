"""The workflow survives what happens to real runs: a run killed mid-job (power cut, OOM killer,
walltime) leaves nothing that Snakemake takes as finished, and the rerun redoes exactly the
unfinished jobs; a finished run has nothing to do; a changed config key reruns only what depends on
it. All on the test preset, locally (`--cores 2`), for the targets of workflow_runs.targets() (every
stage, one patient's reconstructions); the uninterrupted run is made once per session (shared with
tests/test_slurm.py) and copied for the tests that change things.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import workflow_runs as runs  # noqa: E402

pytestmark = pytest.mark.slow

RUN_TIMEOUT = runs.LOCAL_RUN_TIMEOUT
DRY_TIMEOUT = 300
# rules of the test preset's targets, by what they are made from
COHORT_RULES = {"participants", "phantom", "splits", "cohort_figure", "cohort_table"}
SCANNER_RULES = {"norm_scan", "scanner_norm", "norm"}
PER_ACQUISITION = {"simulate", "thin", "histogram", "randoms", "scatter", "osem"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, anatomy_dir):
    return runs.reference_run(tmp_path_factory.getbasetemp() / "petiq-reference", anatomy_dir)


def snakemake(workdir, *args, timeout=RUN_TIMEOUT, log=None) -> runs.Done:
    """snakemake on the shared targets (runs.targets()) of the test preset in workdir."""
    return runs.run(runs.snakemake_cmd(workdir, *args, *runs.targets()), timeout=timeout, log=log, env=runs.env())


def keys(jobs) -> set[tuple[str, str]]:
    return {j.key for j in jobs}


def wait_for_victim(proc, log, workdir, timeout: float):
    """The moment to kill: a running job whose outputs have begun to appear (the hardest case: files
    on disk, job not finished), else a `simulate` job that has run for a second (mid-computation).
    Only once some job has finished, so that the rerun has finished jobs to reuse. Returns (that
    job, whether it had files on disk)."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (exit {proc.returncode}) before a job could be caught mid-way:\n"
                f"{log.read_text()[-3000:]}"
            )
        text = log.read_text(errors="replace")
        finished = runs.finished_jobids(text)
        now = time.monotonic()
        for job in runs.parse_jobs(text):
            if not finished or job.jobid in finished or not job.outputs:  # some job done first
                continue
            if any((workdir / f).exists() for f in job.outputs):
                return job, True
            seen.setdefault(job.jobid, now)
            if job.rule == "simulate" and now - seen[job.jobid] >= 1.0:
                return job, False
        time.sleep(0.05)
    pytest.fail(f"no job caught mid-way within {timeout} s:\n{log.read_text()[-3000:]}")


def test_sigkill_mid_job_leaves_nothing_taken_as_complete(reference, tmp_path, anatomy_dir):
    """SIGKILL to snakemake's whole process group while a job runs (with its first files written if
    the moment can be caught); then nothing of the interrupted jobs passes for finished, and the
    rerun redoes exactly the jobs that had not finished, to results equal to an uninterrupted run's."""
    ref_dir, ref_output = reference
    all_jobs = keys(runs.parse_jobs(ref_output))
    workdir = runs.make_workdir(tmp_path / "work", anatomy_dir)
    log = tmp_path / "killed.log"
    proc = runs.start(runs.snakemake_cmd(workdir, "--cores", "2", *runs.targets()), log, env=runs.env())
    try:
        victim, partial = wait_for_victim(proc, log, workdir, timeout=RUN_TIMEOUT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            runs.kill_group(proc, signal.SIGKILL, 5)
    deadline = time.monotonic() + 30
    while runs.group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not runs.group_members(proc.pid), "processes of the killed run live on"

    text = log.read_text(errors="replace")
    jobs = runs.parse_jobs(text)
    finished = runs.finished_jobids(text)
    done_before = {j.key for j in jobs if j.jobid in finished}
    interrupted = [j for j in jobs if j.jobid not in finished]
    assert victim.key in keys(interrupted) and done_before, text[-3000:]
    scenario = f"killed during {victim.key}, {'with' if partial else 'before'} its first files on disk"

    # Without --rerun-incomplete, Snakemake plans the interrupted jobs again or stops and names
    # their files as incomplete; it never takes their files for finished ones...
    plain = snakemake(workdir, "-n", "--cores", "2", timeout=DRY_TIMEOUT)
    planned_plain = keys(runs.parse_jobs(plain.output)) if plain.returncode == 0 else set()
    if plain.returncode != 0:
        assert "incomplete" in plain.output.lower(), (scenario, plain.tail())
    ref_files = runs.data_files(ref_dir)
    for job in interrupted:
        on_disk = [f for f in job.outputs if (workdir / f).exists()]
        if not on_disk or job.key in planned_plain or all(f in plain.output for f in on_disk):
            continue
        # ...unless the job had in fact finished in the instant of the kill (its line not printed
        # yet): then every file is there and right
        assert len(on_disk) == len(job.outputs), f"{scenario}: {job.key} left {on_disk}, taken as finished"
        for f in on_disk:
            assert runs.data_files(workdir).get(f) == ref_files.get(f) or f.endswith(runs.FIGURES), (scenario, f)

    # The plan, then the rerun: every unfinished job, no finished one. The killed run's lock stays
    # (Snakemake cannot tell a kill from a run still going): the rerun says so and names the fix.
    plan = snakemake(workdir, "-n", "--cores", "2", "--rerun-incomplete", timeout=DRY_TIMEOUT)
    assert plan.returncode == 0, plan.tail()
    planned = keys(runs.parse_jobs(plan.output))
    assert victim.key in planned, scenario
    assert not planned & done_before, f"{scenario}: finished jobs planned again: {sorted(planned & done_before)}"
    locked = snakemake(workdir, "--cores", "2", "--rerun-incomplete", timeout=DRY_TIMEOUT)
    assert locked.returncode != 0 and "--unlock" in locked.output, locked.tail()
    unlock = runs.run(runs.snakemake_cmd(workdir, "--unlock"), timeout=DRY_TIMEOUT, env=runs.env())
    assert unlock.returncode == 0, unlock.tail()
    rerun = snakemake(workdir, "--cores", "2", "--rerun-incomplete", log=tmp_path / "rerun.log")
    assert rerun.returncode == 0, rerun.tail()
    redone = keys(runs.parse_jobs(rerun.output))
    assert redone == planned, (scenario, sorted(redone ^ planned))
    assert not redone & done_before, f"{scenario}: finished jobs run again: {sorted(redone & done_before)}"
    assert all_jobs - done_before - redone <= keys(interrupted), (scenario, sorted(all_jobs - done_before - redone))
    assert redone | done_before <= all_jobs, scenario
    assert runs.compare_outputs(ref_dir, workdir) == [], scenario


def test_rerun_of_a_finished_run_does_nothing(reference, tmp_path):
    workdir = runs.copy_run(reference[0], tmp_path / "work")
    before = runs.mtimes(workdir)
    for args in (["-n"], []):
        done = snakemake(workdir, *args, "--cores", "2", timeout=DRY_TIMEOUT)
        assert done.returncode == 0 and "Nothing to be done" in done.output, done.tail()
    assert runs.mtimes(workdir) == before


@pytest.mark.parametrize(
    "key, value, must_rerun, must_not_rerun",
    [
        # the acquisition time: every simulation and what is made of it; no phantom, no split
        ("listmode.duration_s", 600, PER_ACQUISITION, COHORT_RULES | SCANNER_RULES | {"attenuation"}),
        # the role counts: the split and its table; no patient, no list-mode, no image
        (
            "splits.counts",
            {"pretext_train": 1, "pretext_val": 1, "transfer_train": 1, "transfer_val": 1, "test": 2},
            {"splits", "cohort_table"},
            {"participants", "phantom", "cohort_figure", "attenuation"} | SCANNER_RULES | PER_ACQUISITION,
        ),
    ],
)
def test_changed_config_key_reruns_only_what_depends_on_it(reference, tmp_path, key, value, must_rerun, must_not_rerun):
    workdir = runs.copy_run(reference[0], tmp_path / "work")
    config = runs.read_config(workdir)
    section, name = key.split(".")
    assert config[section][name] != value
    config[section][name] = value
    runs.write_config(workdir, config)
    plan = snakemake(workdir, "-n", "--cores", "2", timeout=DRY_TIMEOUT)
    assert plan.returncode == 0, plan.tail()
    counts = runs.job_counts(plan.output)
    assert must_rerun <= counts.keys(), (key, counts)
    assert not must_not_rerun & counts.keys(), (key, counts)
    if key == "listmode.duration_s":  # every patient's simulation, every dose
        ref_counts = runs.job_counts(reference[1])
        for rule in must_rerun:
            assert counts[rule] == ref_counts[rule], (rule, counts, ref_counts)
        return
    # the small one runs for real: only those files change, and then there is nothing left to do
    before, hashes = runs.mtimes(workdir), runs.data_files(workdir)
    done = snakemake(workdir, "--cores", "2")
    assert done.returncode == 0, done.tail()
    assert set(runs.job_counts(done.output)) == counts.keys()
    rerun_outputs = {f for j in runs.parse_jobs(done.output) for f in j.outputs}
    after = runs.data_files(workdir)
    assert after.keys() == hashes.keys()
    changed = {p for p in hashes if after[p] != hashes[p]}
    touched = {p for p, t in runs.mtimes(workdir).items() if before.get(p) != t and not p.startswith(runs.RUN_RECORDS)}
    assert "results/cohort/splits.tsv" in changed, changed
    assert changed <= touched <= rerun_outputs, (changed, touched, rerun_outputs)
    again = snakemake(workdir, "-n", "--cores", "2", timeout=DRY_TIMEOUT)
    assert "Nothing to be done" in again.output, again.tail()
