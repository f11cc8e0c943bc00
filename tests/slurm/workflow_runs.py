"""Runs of the test preset for tests/test_slurm.py and tests/test_robustness.py: a working folder per
run, snakemake under a hard time limit (its whole process group is killed past it), the jobs a run
printed, and the comparison of two runs' outputs. The uninterrupted local run of the preset is made
once per pytest session and shared (reference_run)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "tests" / "config" / "config.yaml"
SHEET = ROOT / "tests" / "config" / "patients.tsv"
RUN_RECORDS = ("results/logs/", "results/benchmarks/")  # what a run says about itself: may differ
FIGURES = (".png", ".pdf", ".svg")  # compared by presence only (fonts, renderer)
LOCAL_RUN_TIMEOUT = 900  # s; the targets below take ~1.5 min on the 2-core development machine


def targets() -> list[str]:
    """What the runs of these tests make: the cohort figure and table (all six phantoms, the
    splits) and the first synthetic patient's reconstructions at the lowest dose and at 100 %
    (list-mode, thinning, histograms, every correction, OSEM: every stage, ~25 jobs). The whole
    preset (110 jobs, ~5 min locally, ~10 min through SLURM here) is run with
    PETIQ_TEST_FULL_WORKFLOW=1, which gives [] (the default target)."""
    if os.environ.get("PETIQ_TEST_FULL_WORKFLOW") == "1":
        return []
    import pandas as pd

    from petiq.core.bids import recon_image_path

    config = yaml.safe_load(PRESET.read_text())
    sheet = pd.read_csv(SHEET, sep="\t", dtype=str)
    subject = sheet.loc[sheet["source"] == "synthetic", "participant_id"].iloc[0]
    doses = sorted({min(config["doses"]), 100})
    return [
        "results/figures/cohort.png",
        "results/tables/cohort.tsv",
        *(recon_image_path("results/bids", subject, d).as_posix() for d in doses),
    ]


# --- working folders --------------------------------------------------------------------------------
def make_workdir(dest: Path, anatomy_dir: Path) -> Path:
    """A folder that runs the test preset: config/config.yaml (patient sheet beside it, the atlas
    where the session has it) and nothing else."""
    dest = Path(dest)
    (dest / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(SHEET, dest / "config" / "patients.tsv")
    config = yaml.safe_load(PRESET.read_text())
    config["patients"] = "config/patients.tsv"
    config["cohort"]["anatomy_dir"] = str(anatomy_dir)
    write_config(dest, config)
    return dest


def read_config(workdir: Path) -> dict:
    return yaml.safe_load((Path(workdir) / "config" / "config.yaml").read_text())


def write_config(workdir: Path, config: dict) -> None:
    (Path(workdir) / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def copy_run(src: Path, dest: Path) -> Path:
    """A finished run, copied with its .snakemake records and file times (so Snakemake sees it as is)."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return Path(dest)


# --- running snakemake --------------------------------------------------------------------------------
def env(**extra: str) -> dict:
    """As after `. .venv/bin/activate`: this interpreter's `snakemake`, `petiq` and `python` first."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": path, **extra}


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    workdir = Path(workdir)
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config" / "config.yaml"),
        *args,
    ]


@dataclass
class Done:
    returncode: int
    output: str  # stdout and stderr, interleaved
    seconds: float
    cmd: list[str] = field(default_factory=list)

    def tail(self, n: int = 4000) -> str:
        return f"$ {' '.join(self.cmd)}\n(exit {self.returncode} after {self.seconds:.0f} s)\n…{self.output[-n:]}"


def start(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """cmd in its own session and process group, stdout and stderr to log."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )


def kill_group(proc: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 15) -> None:
    """Signal proc's process group, then SIGKILL it after `grace` s if proc still runs."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def run(cmd: list[str], *, timeout: float, log: Path | None = None, **kwargs) -> Done:
    """Run cmd to its end or to `timeout` s; past it the whole process group is killed and the
    test fails with the output's tail (a wedged command never hangs the suite)."""
    log = Path(log) if log else None
    if log is None:
        import tempfile

        handle, name = tempfile.mkstemp(prefix="petiq-run-", suffix=".log")
        os.close(handle)
        log, keep = Path(name), False
    else:
        keep = True
    t0 = time.monotonic()
    proc = start(cmd, log, **kwargs)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        done = Done(-9, log.read_text(errors="replace"), time.monotonic() - t0, cmd)
        raise AssertionError(f"timed out after {timeout:.0f} s, killed:\n{done.tail()}") from None
    finally:
        if proc.poll() is None:
            kill_group(proc, signal.SIGKILL, 5)
    done = Done(proc.returncode, log.read_text(errors="replace"), time.monotonic() - t0, cmd)
    if not keep:
        log.unlink(missing_ok=True)
    return done


# --- what a run printed ------------------------------------------------------------------------------
JOB_HEADER = re.compile(r"^(local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*)\)\.")


@dataclass
class Job:
    rule: str
    jobid: int
    local: bool
    wildcards: str = ""
    threads: int = 1
    resources: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule, self.wildcards)

    def gpus(self) -> int:
        gpu = self.resources.get("gpu") or self.resources.get("gpus") or "0"
        gres = self.resources.get("gres", "")
        n = int(gpu) if str(gpu).isdigit() else 0
        if not n and gres.startswith("gpu"):
            n = int(gres.rsplit(":", 1)[1]) if gres.count(":") else 1
        return n


def _split_fields(text: str) -> dict:
    out = {}
    for item in text.split(", "):
        name, _, value = item.partition("=")
        out[name.strip()] = value.strip()
    return out


def parse_jobs(text: str) -> list[Job]:
    """Every job block a run (or a dry run) printed, in order."""
    jobs, current = [], None
    for line in text.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            current = Job(rule=header.group(2), jobid=-1, local=bool(header.group(1)))
            jobs.append(current)
            continue
        if current is None:
            continue
        if not line.startswith("    "):
            current = None
            continue
        name, _, value = line.strip().partition(": ")
        if name == "jobid":
            current.jobid = int(value)
        elif name == "wildcards":
            current.wildcards = value
        elif name == "threads":
            current.threads = int(value)
        elif name == "resources":
            current.resources = _split_fields(value)
        elif name == "output":
            current.outputs = value.split(", ")
    return jobs


def finished_jobids(text: str) -> set[int]:
    return {int(m.group(1)) for line in text.splitlines() if (m := FINISHED.match(line))}


def submissions(text: str) -> dict[int, tuple[str, str]]:
    """Snakemake jobid → (SLURM job id, SLURM log file) for every job a SLURM run submitted."""
    return {int(m.group(1)): (m.group(2), m.group(3)) for line in text.splitlines() if (m := SUBMITTED.match(line))}


def job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule → count; {} when there is nothing to do."""
    counts = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Job stats:":
            for row in lines[i + 3 :]:
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    break
                counts[parts[0]] = int(parts[1])
            break
    counts.pop("total", None)
    return counts


# --- outputs ---------------------------------------------------------------------------------------------
def is_write_leftover(path: Path) -> bool:
    """A hidden temporary file of petiq.core.fileio's atomic writes (`.name.XXXX.tmp…`), which a killed job
    may leave and no rule takes for an output."""
    return path.name.startswith(".") and ".tmp" in path.name


def data_files(workdir: Path) -> dict[str, str]:
    """results/ less the run's own records: relative path → sha256."""
    workdir = Path(workdir)
    files = {}
    for path in sorted((workdir / "results").rglob("*")):
        rel = path.relative_to(workdir).as_posix()
        if path.is_file() and not rel.startswith(RUN_RECORDS) and not is_write_leftover(path):
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def compare_outputs(a: Path, b: Path) -> list[str]:
    """Differences between two runs' results (same files; same bytes except figures), as sentences."""
    fa, fb = data_files(a), data_files(b)
    problems = [f"only in {a}: {p}" for p in sorted(fa.keys() - fb.keys())]
    problems += [f"only in {b}: {p}" for p in sorted(fb.keys() - fa.keys())]
    problems += [f"differs: {p}" for p in sorted(fa.keys() & fb.keys()) if fa[p] != fb[p] and not p.endswith(FIGURES)]
    return problems


def mtimes(workdir: Path) -> dict[str, int]:
    workdir = Path(workdir)
    return {
        p.relative_to(workdir).as_posix(): p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()
    }


# --- the shared uninterrupted local run ----------------------------------------------------------------
def reference_run(base: Path, anatomy_dir: Path) -> tuple[Path, str]:
    """targets() of the test preset run locally (`--cores 2`) from scratch, once per pytest session
    (base is the session's temporary folder); returns its folder and what it printed."""
    workdir = Path(base) / "reference"
    marker, log = workdir / ".petiq-reference-complete", Path(base) / "reference.log"
    if not marker.exists():
        if workdir.exists():
            shutil.rmtree(workdir)
        make_workdir(workdir, anatomy_dir)
        done = run(snakemake_cmd(workdir, "--cores", "2", *targets()), timeout=LOCAL_RUN_TIMEOUT, log=log, env=env())
        assert done.returncode == 0, f"the uninterrupted local run failed:\n{done.tail()}"
        marker.write_text(f"{done.seconds:.1f} s\n")
    return workdir, log.read_text(errors="replace")
