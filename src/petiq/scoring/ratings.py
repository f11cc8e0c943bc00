"""Clinicians' filled ratings forms -> ``ratings.tsv`` (unblinded).

:func:`import_ratings` reads every filled form (see :func:`petiq.scoring.sessions.blank_form`), checks them
all — columns, blinded ids known to the key and scored once per rater, every image of a session
scored, the rater named, GQR/PR/DC each 0–3 in steps of 0.5 — and only when no problem is left does
it unblind the scores with the private key and write the ratings table (:data:`RATINGS_COLUMNS`).
Problems are collected across all forms and raised together (:class:`RatingsFormError`), each with
its file, line and column, so a reader fixes every cell in one pass.

A form may hold one rater's scores of one session (as handed out) or several raters' and sessions'
rows; what matters is that each (rater, blinded id) pair occurs once and that a rater who scored any
image of a session scored all of it. :func:`check_ratings_table` applies the same score checks to a
ratings table given directly (ratings from elsewhere, in the final format).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..core.doses import dose_label
from ..core.errors import PetiqInputError
from ..core.fileio import read_text_table, write_tsv
from .agreement import METRICS, RATINGS_COLUMNS, READINGS
from .sessions import FORM_COLUMNS, read_plan

SCORE_FIX = "give a score from 0 to 3 in steps of 0.5 (0, 0.5, 1, ..., 3)"
REQUIRED_FORM_COLUMNS = ("blinded_id", "rater", *METRICS)


@dataclass(frozen=True)
class FormProblem:
    """One problem in one cell (or line, or file) of a form."""

    path: str
    line: int | None
    column: str | None
    what: str
    fix: str

    def __str__(self) -> str:
        where = (
            self.path
            + (f", line {self.line}" if self.line else "")
            + (f", column {self.column}" if self.column else "")
        )
        return f"{where}: {self.what} (fix: {self.fix})"


class RatingsFormError(PetiqInputError):
    """Every problem found in the ratings forms (``.problems``), raised before anything is written."""

    def __init__(self, problems: Sequence[FormProblem]):
        self.problems = list(problems)
        listing = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(
            None,
            f"{len(self.problems)} problem(s) in the ratings, nothing was written",
            f"correct every cell listed below and import again:{listing}",
        )


def parse_score(text: str) -> tuple[float | None, str | None, str | None]:
    """A score cell -> ``(value, None, None)`` or ``(None, what is wrong, fix)``.

    >>> parse_score(" 1.5 ")
    (1.5, None, None)
    >>> parse_score("2,5")[1:]
    ("'2,5' uses a decimal comma", 'write 2.5')
    >>> parse_score("1.3")[1:]
    ("'1.3' is not a step of 0.5", 'round it to 1.5 or 1')
    """
    text = text.strip()
    if not text:
        return None, "is blank", SCORE_FIX
    if "," in text and text.replace(",", ".", 1).replace(".", "", 1).isdigit():
        return None, f"{text!r} uses a decimal comma", f"write {text.replace(',', '.')}"
    try:
        value = float(text)
    except ValueError:
        return None, f"{text!r} is not a number", SCORE_FIX
    if not math.isfinite(value) or not 0 <= value <= 3:
        return None, f"{text!r} is outside 0–3", SCORE_FIX
    if abs(value * 2 - round(value * 2)) > 1e-9:
        up, down = math.ceil(value * 2) / 2, math.floor(value * 2) / 2
        return None, f"{text!r} is not a step of 0.5", f"round it to {up:g} or {down:g}"
    return float(round(value * 2) / 2), None, None


def _read_table(path: Path, problems: list[FormProblem]) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """Header (stripped) and ``(line, cells)`` rows of a tab-separated file; None when unreadable."""
    name = str(path)
    if not path.is_file():
        problems.append(FormProblem(name, None, None, "the file does not exist", "give the path of a filled form"))
        return None
    try:
        text = read_text_table(path, "form")
    except PetiqInputError as error:
        problems.append(FormProblem(name, None, None, error.problem, error.fix))
        return None
    reader = csv.reader(text.splitlines(keepends=True), delimiter="\t")
    rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    if not rows:
        problems.append(
            FormProblem(name, None, None, "the file is empty", "fill in the form petiq wrote for the session")
        )
        return None
    header = [c.strip() for c in rows[0][1]]
    if len(header) == 1 and ("," in header[0] or ";" in header[0]):
        problems.append(
            FormProblem(
                name,
                1,
                None,
                "the form is not tab-separated (it looks comma- or semicolon-separated)",
                "save it as tab-separated text (.tsv)",
            )
        )
        return None
    return header, rows[1:]


def _cells(header, rows, name, problems) -> list[tuple[int, dict[str, str]]]:
    """Rows as ``{column: cell}``; rows with more cells than the header are problems."""
    out = []
    for line, cells in rows:
        extra = [c for c in cells[len(header) :] if c.strip()]
        if extra:
            problems.append(
                FormProblem(
                    name,
                    line,
                    None,
                    f"the row has {len(cells)} cells but the header {len(header)}",
                    "remove the extra cells (or tabs inside a cell)",
                )
            )
            continue
        cells = cells + [""] * (len(header) - len(cells))
        out.append((line, dict(zip(header, cells))))
    return out


def _check_header(header, required, allowed, name, problems) -> bool:
    ok = True
    for column in sorted({c for c in header if header.count(c) > 1}):
        problems.append(
            FormProblem(name, 1, column, "the column appears more than once", "keep one column of each name")
        )
        ok = False
    for column in required:
        if column not in header:
            problems.append(
                FormProblem(name, 1, column, "the column is missing", f"use the columns {', '.join(allowed)}")
            )
            ok = False
    for column in header:
        if column not in allowed:
            problems.append(
                FormProblem(name, 1, column or "(blank)", "unknown column", f"use the columns {', '.join(allowed)}")
            )
            ok = False
    return ok


def collect_forms(paths: Iterable[str | Path], key_path: str | Path | None = None) -> list[Path]:
    """Files as given, and the ``*.tsv`` files under any folder given (never the key itself), sorted per folder."""
    key = Path(key_path).resolve() if key_path else None
    out: list[Path] = []
    for p in map(Path, paths):
        found = sorted(f for f in p.rglob("*.tsv") if f.is_file()) if p.is_dir() else [p]
        out.extend(f for f in found if key is None or f.resolve() != key)
    return out


def read_forms(
    form_paths: Sequence[str | Path], plan: pd.DataFrame, *, partial: bool = False
) -> tuple[pd.DataFrame, list[FormProblem]]:
    """Check the forms against the plan; return ``(blinded scores, problems)``.

    The scores table has columns ``blinded_id, rater, GQR, PR, DC`` and is only complete when
    ``problems`` is empty. Unless ``partial``, every session of the plan must be scored by someone.
    """
    problems: list[FormProblem] = []
    if not form_paths:
        problems.append(
            FormProblem(
                "(no forms)", None, None, "no ratings forms were given", "pass the filled forms (files or a folder)"
            )
        )
    session_of = dict(zip(plan["blinded_id"], plan["session"]))
    ids_of_session = plan.groupby("session")["blinded_id"].apply(set).to_dict()
    seen: dict[tuple[str, str], str] = {}
    where: dict[tuple[str, int], list[str]] = {}  # (rater, session) -> forms holding its rows
    records = []
    for path in map(Path, form_paths):
        name = str(path)
        table = _read_table(path, problems)
        if table is None:
            continue
        header, rows = table
        if not _check_header(header, REQUIRED_FORM_COLUMNS, FORM_COLUMNS, name, problems):
            continue
        if not rows:
            problems.append(
                FormProblem(name, None, None, "the form has no rows", "use the form petiq wrote for the session")
            )
        for line, row in _cells(header, rows, name, problems):
            bid = row["blinded_id"].strip().upper()
            rater = row["rater"].strip()
            if not bid:
                problems.append(
                    FormProblem(
                        name, line, "blinded_id", "is blank", "keep the blinded id of every row as the form had it"
                    )
                )
            elif bid not in session_of:
                problems.append(
                    FormProblem(
                        name,
                        line,
                        "blinded_id",
                        f"{bid!r} is not in the unblinding key",
                        "copy the id exactly as on the reading sheet",
                    )
                )
                bid = ""
            if not rater:
                problems.append(
                    FormProblem(name, line, "rater", "is blank", "write the rater's name (the same in every form)")
                )
            scores = {}
            for metric in METRICS:
                value, what, fix = parse_score(row[metric])
                if what:
                    problems.append(FormProblem(name, line, metric, what, fix))
                scores[metric] = value
            if not (bid and rater):
                continue
            here = f"{name}, line {line}"
            if (rater, bid) in seen:
                problems.append(
                    FormProblem(
                        name,
                        line,
                        "blinded_id",
                        f"{bid} is scored again by rater {rater!r} (first at {seen[rater, bid]})",
                        "keep one row per image and rater",
                    )
                )
                continue
            seen[rater, bid] = here
            forms = where.setdefault((rater, int(session_of[bid])), [])
            if name not in forms:
                forms.append(name)
            records.append({"blinded_id": bid, "rater": rater, **scores})
    for (rater, session), forms in sorted(where.items()):
        missing = sorted(ids_of_session[session] - {bid for (r, bid) in seen if r == rater})
        if missing:
            problems.append(
                FormProblem(
                    " + ".join(forms),
                    None,
                    "blinded_id",
                    f"rater {rater!r} scored {len(ids_of_session[session]) - len(missing)} of the {len(ids_of_session[session])} images of session {session}; missing {missing}",
                    f"score every image of session {session} (all ids of session-{session}_ratings-form.tsv)",
                )
            )
    if not partial and form_paths:
        scored = {s for (_, s) in where}
        for session in sorted(set(ids_of_session) - scored):
            problems.append(
                FormProblem(
                    "(all forms)",
                    None,
                    None,
                    f"no form holds scores of session {session}",
                    f"add the filled session-{session}_ratings-form.tsv (or import a partial set on purpose)",
                )
            )
    return pd.DataFrame(records, columns=["blinded_id", "rater", *METRICS]), problems


def unblind(scores: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    """Blinded scores + key -> the ratings table (:data:`RATINGS_COLUMNS`), sorted by rater, session, patient, dose."""
    table = scores.merge(plan, on="blinded_id", how="left", validate="many_to_one")
    table = table.sort_values(["rater", "session", "participant_id", "dose", "reading"], kind="stable")
    return table[list(RATINGS_COLUMNS)].reset_index(drop=True)


def import_ratings(
    form_paths: Sequence[str | Path],
    key_path: str | Path,
    out_path: str | Path,
    *,
    partial: bool = False,
) -> pd.DataFrame:
    """Check all filled forms, then unblind and write the ratings table; raise every problem before writing."""
    plan = read_plan(key_path)
    forms = collect_forms(form_paths, key_path)
    scores, problems = read_forms(forms, plan, partial=partial)
    if problems:
        raise RatingsFormError(problems)
    ratings = unblind(scores, plan)
    write_tsv(out_path, ratings)
    return ratings


def check_ratings_table(path: str | Path) -> pd.DataFrame:
    """Check a ratings table given directly (final format, :data:`RATINGS_COLUMNS`); return it typed."""
    path = Path(path)
    name = str(path)
    problems: list[FormProblem] = []
    table = _read_table(path, problems)
    if table is None or not _check_header(table[0], RATINGS_COLUMNS, RATINGS_COLUMNS, name, problems):
        raise RatingsFormError(problems)
    header, rows = table
    records, seen = [], {}
    for line, row in _cells(header, rows, name, problems):
        rec = {c: row[c].strip() for c in RATINGS_COLUMNS}
        for column in ("participant_id", "rater"):
            if not rec[column]:
                problems.append(FormProblem(name, line, column, "is blank", f"give the {column} of every row"))
        try:
            rec["dose"] = float(rec["dose"])
            dose_label(rec["dose"])
        except ValueError:
            problems.append(
                FormProblem(
                    name,
                    line,
                    "dose",
                    f"{row['dose']!r} is not a dose in percent (0, 100]",
                    "write the dose in percent, e.g. 0.5 or 25",
                )
            )
        if not rec["session"].isdigit() or int(rec["session"]) < 1:
            problems.append(
                FormProblem(
                    name, line, "session", f"{row['session']!r} is not a session number", "number sessions 1, 2, ..."
                )
            )
        else:
            rec["session"] = int(rec["session"])
        if rec["reading"] not in READINGS:
            problems.append(
                FormProblem(
                    name,
                    line,
                    "reading",
                    f"{row['reading']!r} is not one of {', '.join(READINGS)}",
                    "write first or repeat",
                )
            )
        for metric in METRICS:
            value, what, fix = parse_score(row[metric])
            if what:
                problems.append(FormProblem(name, line, metric, what, fix))
            rec[metric] = value
        key = tuple(rec[c] for c in ("participant_id", "dose", "rater", "reading"))
        if rec["reading"] == "first" and key in seen:
            problems.append(
                FormProblem(
                    name,
                    line,
                    None,
                    f"a second first reading of {key[0]} at {key[1]} % by {key[2]!r} (line {seen[key]})",
                    "keep one first reading per image and rater; mark later ones repeat",
                )
            )
        seen.setdefault(key, line)
        records.append(rec)
    if not records and not problems:
        problems.append(FormProblem(name, None, None, "the table has no rows", "add the ratings"))
    if problems:
        raise RatingsFormError(problems)
    return pd.DataFrame(records, columns=list(RATINGS_COLUMNS))


def rater_summary(ratings: pd.DataFrame) -> pd.DataFrame:
    """Per rater: readings, first readings, re-reads and sessions scored."""
    rows = []
    for rater, part in ratings.groupby("rater", sort=True):
        counts = Counter(part["reading"])
        rows.append(
            {
                "rater": rater,
                "readings": len(part),
                "first": counts.get("first", 0),
                "repeat": counts.get("repeat", 0),
                "sessions": ",".join(str(s) for s in sorted(part["session"].unique())),
            }
        )
    return pd.DataFrame(rows, columns=["rater", "readings", "first", "repeat", "sessions"])
