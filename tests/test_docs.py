"""The documentation cannot drift from the code: every `snakemake` command in the README's and
docs/'s fenced blocks plans without error (as a dry run), and every `petiq` command in them runs,
in order, on test data laid out where the README says the files are."""

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
NOT_DRY_RUNNABLE = (
    "--unlock",
    "--report",
    "|",
    "/tmp/petiq-slurm",
)  # need a finished run or the test cluster (tests/test_slurm.py)


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
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "-n"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": path},
    )
    assert done.returncode == 0, f"{doc}: `{command}` fails:\n{(done.stdout + done.stderr)[-2000:]}"
    assert "This was a dry-run" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A workflow folder as the README's commands expect it: the config and sheet, a filled reading
    session with its unblinding key, a trained pipeline-(b) run and a new reconstruction to score."""
    import shutil

    from test_bad_inputs import FORM, KEY
    from test_predict import brain_volume, save, train_small_run

    site = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "config", site / "config")
    from petiq.cli import main
    from petiq.scoring.sessions import blank_form, read_plan

    assert (
        main(
            [
                "sessions",
                "plan",
                "--patients",
                "sub-01",
                "sub-02",
                "--doses",
                "1",
                "10",
                "100",
                "--n-sessions",
                "3",
                "--max-images",
                "10",
                "--seed",
                "7",
                "--out",
                str(site / "results/scores" / KEY),
            ]
        )
        == 0
    )
    plan = read_plan(site / "results/scores" / KEY)
    for session in sorted(plan["session"].unique()):
        form = blank_form(plan, session)
        form["rater"], form["GQR"], form["PR"], form["DC"] = "dr-a", "2", "2.5", "1.5"
        path = site / "results/scores" / FORM.replace("session-1", f"session-{session}")
        path.parent.mkdir(parents=True)
        form.to_csv(path, sep="\t", index=False)
    (site / "config/ratings.tsv").unlink(missing_ok=True)
    train_small_run(site / "results/models/transfer/vgg16_imagenet_k2_lr1e-04_n7")
    save(site / "new_recon.nii.gz", brain_volume(seed=11))
    return site


PETIQ = commands("petiq")


def test_petiq_commands_run_on_test_data(project):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for doc, command in PETIQ:  # in the order a reader meets them: later ones may use what earlier ones wrote
        done = subprocess.run(
            [sys.executable, "-m", "petiq.cli", *shlex.split(command)[1:]],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
        )
        assert done.returncode == 0, f"{doc}: `{command}` fails:\n{(done.stdout + done.stderr)[-2000:]}"
    assert len(PETIQ) >= 4 and (project / "config/ratings.tsv").is_file() and (project / "scores.tsv").is_file()


def test_every_repository_path_the_docs_name_exists():
    """A test, script or module the README or docs/ points to (`tests/test_x.py`, `src/petiq/…`,
    `workflow/…`, `benchmarks/…`) is there: a renamed or deleted file cannot leave a dangling pointer."""
    missing = []
    for doc in DOCS:
        for path in re.findall(
            r"`((?:tests|src|workflow|benchmarks|envs|profiles|config)/[\w./-]+\.\w+)", doc.read_text()
        ):
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)


def test_readme_is_short_and_every_page_it_links_exists():
    """The README is read in five minutes (≤ 200 lines); every relative link in it and in docs/ (and the
    pages beside the README) points to a file that is there."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    pages = [*DOCS, *(ROOT / name for name in ("CONTRIBUTING.md", "CHANGELOG.md"))]
    broken = []
    for doc in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)\)", readme.read_text()))
    assert {p.name for p in (ROOT / "docs").glob("*.md")} - linked <= {"frame.md", "norm.md", "mumaps.md"}


def _documented_keys(text: str) -> set[str]:
    """Config keys named in the first column of docs/configuration.md's key table (`a.b`, `.c` for a
    sibling of the previous key, `a.{b,c}` for several)."""
    keys: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        previous = None
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            several = re.fullmatch(r"(.*)\.\{(.*)\}", name)
            if several:
                keys |= {f"{several.group(1)}.{leaf}" for leaf in several.group(2).split(",")}
                continue
            if name.startswith(".") and previous:
                name = previous.rsplit(".", 1)[0] + name
            keys.add(name)
            previous = name
    return keys


def test_configuration_page_documents_exactly_the_schemas_keys():
    """docs/configuration.md and workflow/schemas/config.schema.yaml agree: every key of the schema is in
    the table (itself or a parent, e.g. `splits.counts`), and the table names no key the schema lacks."""
    import yaml
    from schema_walk import schema_keys

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    leaves = set(schema_keys(schema))
    parents = {leaf.rsplit(".", n)[0] for leaf in leaves for n in range(1, leaf.count(".") + 1)}
    documented = _documented_keys((ROOT / "docs/configuration.md").read_text())
    undocumented = sorted(
        leaf for leaf in leaves if not any(leaf == key or leaf.startswith(key + ".") for key in documented)
    )
    assert not undocumented, f"schema keys missing from docs/configuration.md: {undocumented}"
    assert not documented - leaves - parents, f"not schema keys: {sorted(documented - leaves - parents)}"


def test_configuration_page_is_the_table_the_schema_generates(tmp_path):
    """The key table of docs/configuration.md is what `petiq config-reference` makes from the schema (a
    schema change without `petiq config-reference --write docs/configuration.md` fails here), and the
    command rewrites a stale page in place, keeping the prose around the generated section."""
    import yaml

    from petiq.core.config_reference import write_reference

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    page = ROOT / "docs/configuration.md"
    assert write_reference(page, schema, check=True), "run `petiq config-reference --write docs/configuration.md`"
    stale = tmp_path / "configuration.md"
    stale.write_text(page.read_text().replace("| `seed` |", "| `seed_old` |"))
    done = subprocess.run(
        [sys.executable, "-m", "petiq.cli", "config-reference", "--write", str(stale), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "differs" in done.stderr
    subprocess.run([sys.executable, "-m", "petiq.cli", "config-reference", "--write", str(stale)], cwd=ROOT, check=True)
    assert stale.read_text() == page.read_text()


def test_the_results_layout_is_spelled_only_in_petiq_core_paths():
    """Rule files and scripts name no results folder themselves: they take it from petiq.core.paths (via
    common.smk), so moving an output folder is a one-line change."""
    from petiq.core import paths

    offenders = []
    for path in sorted((ROOT / "workflow").rglob("*")):
        if path.suffix not in {".smk", ".py"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if f'"{paths.RESULTS}/' in code or f"'{paths.RESULTS}/" in code or f'f"{paths.RESULTS}/' in code:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
    assert paths.norm01_image("sub-01", "100.0").startswith(paths.RECON + "/derivatives/")
