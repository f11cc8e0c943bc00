"""The documentation cannot drift from the code: every `snakemake` command in the README's and
docs/'s fenced blocks plans without error (as a dry run), and every `petiq` sub-command they name
exists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_DRY_RUNNABLE = ("--unlock", "--report", "|", "/tmp/petiq-slurm")  # need a finished run or the test cluster (tests/test_slurm.py)


def commands(prefix: str) -> list[tuple[str, str]]:
    """(file, command) for every line of a fenced shell block that starts with ``prefix``."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command.startswith(prefix + " "):
                    found.append((doc.name, command))
    return found


SNAKEMAKE = [c for c in commands("snakemake") if not any(word in c[1] for word in NOT_DRY_RUNNABLE)]


def test_the_docs_have_commands():
    assert len(SNAKEMAKE) >= 8 and commands("petiq")


@pytest.mark.parametrize("doc, command", SNAKEMAKE, ids=[c for _, c in SNAKEMAKE])
def test_snakemake_command_plans(doc, command):
    args = shlex.split(command)[1:]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    done = subprocess.run([sys.executable, "-m", "snakemake", *args, "-n"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": path})
    assert done.returncode == 0, f"{doc}: `{command}` fails:\n{(done.stdout + done.stderr)[-2000:]}"
    assert "This was a dry-run" in done.stdout + done.stderr


def test_petiq_commands_exist():
    from petiq.cli import build_parser

    parser = build_parser()
    for doc, command in commands("petiq"):
        words = [w for w in shlex.split(command.replace("[", "").replace("]", "").replace("…", ""))[1:]]
        sub = [w for w in words[:2] if not w.startswith("-")]
        with pytest.raises(SystemExit) as done:  # --help of the named sub-command exits 0 when it exists
            parser.parse_args([*sub, "--help"])
        assert done.value.code == 0, (doc, command)
