"""Reading sessions for real clinicians: which images each session shows, blinded.

:func:`plan_sessions` solves a small integer programme (PuLP with the HiGHS solver). For every rated
patient it picks the images to read (``design="paper"``: one dose per dose category, as in Hopson et
al. 2022; ``design="all_doses"``: every dose) and places every reading in a session so that

* a patient is read at most once per session (first readings and re-reads alike);
* each session's counts of low / medium / high readings are within one of their share of the session;
* ``rereads`` images are read a second time, in a later session than their first reading, spread over
  the categories in proportion;
* every session holds between ``min_images`` and ``max_images`` readings;
* (paper design) the doses within a category are spread evenly over the patients.

Among the plans that meet these it prefers even session sizes and few re-reads per patient; a seeded
tie-break picks one of the equally good plans. Every reading gets its own random, unguessable blinded
id. The plan is the private unblinding key (:data:`PLAN_COLUMNS`); readers only ever see the blinded
ids (:func:`write_session_materials`). Settings that admit no plan fail with the constraint to blame.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pulp

from ..core.doses import CATEGORIES, dose_category, dose_label
from ..core.errors import PetiqInputError
from ..core.fileio import read_tsv_frame, write_text, write_tsv
from ..core.seeding import rng_for
from .agreement import READINGS

PLAN_COLUMNS = ("blinded_id", "participant_id", "dose", "category", "session", "reading")
FORM_COLUMNS = ("blinded_id", "rater", "GQR", "PR", "DC", "comment")
DESIGNS = ("paper", "all_doses")
# no 0/O, 1/I/L, 2/Z, 5/S, 8/B: easy to read aloud and to type
ALPHABET = "ACDEFGHJKMNPQRTUVWXY34679"
log = logging.getLogger("petiq.scoring.sessions")
ID_LENGTH = 6
KEY_README = """\
PRIVATE - DO NOT GIVE THIS FOLDER TO THE READERS.

unblinding_key.tsv maps every blinded image id of the reading sessions to its patient and dose
(columns {columns}). Readers get only the session folders
(sheets, session PDF and the blank ratings form). Keep this folder apart from them until every
form is filled in; `petiq ratings import` uses the key to unblind the filled forms.
"""
READER_README = """\
Reading sessions ({n} in all). Read the sessions in order; one folder per session:

  session-N/session-N.pdf               one page per image (greyscale and 20-colour scale views)
  session-N/sheets/<blinded_id>.png     the same pages as single images
  session-N/session-N_ratings-form.tsv  the form to fill in (tab-separated)

In the form, fill in for every row: rater (your name or initials, the same in every session),
GQR (global quality rating), PR (pattern recognition) and DC (diagnostic confidence), each
0 to 3 in steps of 0.5 (0, 0.5, 1, ..., 3). The comment column is optional. Keep the rows and
the blinded ids as they are; each rater returns their own filled copy of each session's form.
"""

_FAMILIES = {
    "patient_once": (
        "a patient cannot be read at most once per session",
        "add sessions (n_sessions) or read fewer images per patient",
    ),
    "size": (
        "the readings cannot be split into sessions of {min_images} to {max_images} images",
        "widen min_images/max_images or change n_sessions",
    ),
    "balance": (
        "the low/medium/high categories cannot be balanced within every session",
        "change n_sessions, min_images/max_images or rereads so that each session can hold its share of every category",
    ),
    "reread_balance": (
        "the {rereads} re-reads cannot be spread over the categories in proportion",
        "choose another number of re-reads",
    ),
    "dose_spread": (
        "the doses within a category cannot be spread evenly over the patients",
        "change the list of doses or of patients",
    ),
}


def rated_patients(splits: pd.DataFrame, rated_roles: Sequence[str]) -> list[str]:
    """The patients of ``splits`` (participant_id, role) whose role is rated, sorted.

    >>> rated_patients(pd.DataFrame({"participant_id": ["sub-02", "sub-01", "sub-03"],
    ...                              "role": ["test", "train", "pretext_train"]}), ["train", "test"])
    ['sub-01', 'sub-02']
    """
    return sorted(splits.loc[splits["role"].isin(list(rated_roles)), "participant_id"])


def plan_sessions(
    participant_ids: Sequence[str],
    doses: Sequence[float],
    *,
    design: str = "paper",
    rereads: int = 0,
    n_sessions: int = 4,
    min_images: int = 1,
    max_images: int = 12,
    seed: int,
    time_limit_s: float = 120.0,
    names: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Solve the session programme; return the plan (= unblinding key) sorted by session and blinded id.

    ``names``: what to call the settings in messages (:func:`check_session_settings`)."""
    ids = [str(p) for p in participant_ids]
    groups = check_session_settings(ids, doses, design, rereads, n_sessions, min_images, max_images, names=names)
    settings = dict(
        rereads=int(rereads), n_sessions=int(n_sessions), min_images=int(min_images), max_images=int(max_images)
    )
    prob, x, r = _build(ids, groups, design, seed=seed, relax=frozenset(), **settings)
    if not _solve(prob, time_limit_s):
        raise _infeasible(ids, groups, design, seed, settings, time_limit_s, pulp.LpStatus[prob.status])
    rows = []
    for (p, d, s), var in sorted(x.items()):
        if var.value() > 0.5:
            rows.append((ids[p], d, s + 1, "first"))
    for (p, d, s), var in sorted(r.items()):
        if var.value() > 0.5:
            rows.append((ids[p], d, s + 1, "repeat"))
    plan = pd.DataFrame(rows, columns=["participant_id", "dose", "session", "reading"])
    codes = blinded_ids(len(plan), seed)
    order = rng_for(seed, "sessions", "order").permutation(len(plan))  # which reading gets which code
    plan.insert(0, "blinded_id", [codes[i] for i in order])
    plan.insert(3, "category", [dose_category(d) for d in plan["dose"]])
    plan["dose"] = plan["dose"].astype(float)
    plan["session"] = plan["session"].astype(int)
    return plan.sort_values(["session", "blinded_id"]).reset_index(drop=True)[list(PLAN_COLUMNS)]


def blinded_ids(n: int, seed: int) -> list[str]:
    """``n`` distinct random ids of :data:`ID_LENGTH` characters from :data:`ALPHABET` (seeded).

    >>> ids = blinded_ids(5, 1)
    >>> len(set(ids)), all(len(i) == ID_LENGTH and set(i) <= set(ALPHABET) for i in ids)
    (5, True)
    >>> ids == blinded_ids(5, 1) and ids != blinded_ids(5, 2)
    True
    """
    rng = rng_for(seed, "sessions")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        code = "".join(rng.choice(list(ALPHABET), size=ID_LENGTH))
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def check_session_settings(
    ids, doses, design, rereads, n_sessions, min_images, max_images, names=None
) -> dict[str, list[float]]:
    """Validate the settings and return the doses to read per category; raise the reason if no plan can exist.

    ``names``: what to call the settings in messages (e.g. their config keys); default the argument names.
    """
    name_of = {k: k for k in ("rereads", "n_sessions", "min_images", "max_images")} | dict(names or {})
    if design not in DESIGNS:
        raise PetiqInputError(None, f"unknown session design {design!r}", f"use one of {', '.join(DESIGNS)}")
    if not ids:
        raise PetiqInputError(
            None, "no patients to rate", "pass the rated patients (roles transfer_train, transfer_val, test)"
        )
    repeated = sorted({p for p in ids if ids.count(p) > 1})
    if repeated:
        raise PetiqInputError(None, f"patients {repeated} are listed more than once", "list every rated patient once")
    for name, value, low in (
        ("rereads", rereads, 0),
        ("n_sessions", n_sessions, 1),
        ("min_images", min_images, 0),
        ("max_images", max_images, 1),
    ):
        if int(value) != value or value < low:
            raise PetiqInputError(
                None, f"{name_of[name]} is {value}", f"set {name_of[name]} to a whole number >= {low}"
            )
    if min_images > max_images:
        raise PetiqInputError(
            None,
            f"{name_of['min_images']} ({min_images}) is above {name_of['max_images']} ({max_images})",
            f"make {name_of['min_images']} <= {name_of['max_images']}",
        )
    values = sorted({float(d) for d in doses})
    if not values:
        raise PetiqInputError(None, "no doses to read", "pass the reconstructed doses (config key doses)")
    for d in values:
        try:
            dose_label(d)
        except ValueError as error:
            raise PetiqInputError(
                None, str(error), "use doses in percent, in (0, 100], with at most one decimal"
            ) from None
    groups = {c: [d for d in values if dose_category(d) == c] for c in CATEGORIES}
    groups = {c: ds for c, ds in groups.items() if ds}
    per_patient = len(groups) if design == "paper" else len(values)
    n_patients, n_images = len(ids), len(ids) * per_patient
    total = n_images + rereads
    reasons = []
    if rereads > n_images:
        reasons.append(
            (
                f"{rereads} re-reads asked for but only {n_images} images are read (each is re-read at most once)",
                f"lower {name_of['rereads']}",
            )
        )
    if rereads and n_sessions < 2:
        reasons.append(
            (
                f"re-reads need a later session than the first reading, but {name_of['n_sessions']} is 1",
                f"use 2 or more sessions, or {name_of['rereads']}: 0",
            )
        )
    if per_patient > n_sessions:
        reasons.append(
            (
                f"each patient has {per_patient} images to read and is read at most once per session, so {per_patient} sessions are needed, not {n_sessions}",
                f"set {name_of['n_sessions']} >= {per_patient}",
            )
        )
    elif rereads > n_patients * (n_sessions - per_patient):
        reasons.append(
            (
                f"{rereads} re-reads do not fit: a patient's {per_patient} images and re-reads each need their own session, so "
                f"{n_sessions} sessions leave room for at most {n_patients * (n_sessions - per_patient)} re-reads",
                f"add sessions or lower {name_of['rereads']} to <= {n_patients * (n_sessions - per_patient)}",
            )
        )
    if total > n_sessions * max_images:
        reasons.append(
            (
                f"{total} readings ({n_images} images + {rereads} re-reads) do not fit in {n_sessions} sessions of at most {max_images}",
                f"raise {name_of['max_images']} to >= {math.ceil(total / n_sessions)} or add sessions",
            )
        )
    if total < n_sessions * min_images:
        reasons.append(
            (
                f"{total} readings ({n_images} images + {rereads} re-reads) cannot fill {n_sessions} sessions of at least {min_images}",
                f"lower {name_of['min_images']} to <= {total // n_sessions} or use fewer sessions",
            )
        )
    if reasons:
        raise PetiqInputError(
            None,
            "no reading-session plan exists: " + "; ".join(p for p, _ in reasons),
            "; ".join(f for _, f in reasons),
        )
    return groups


def _build(ids, groups, design, *, seed, relax, rereads, n_sessions, min_images, max_images):
    """The session programme; constraint families named in ``relax`` are left out (for diagnosis)."""
    n_p, n_s = len(ids), n_sessions
    doses = [d for ds in groups.values() for d in ds]
    # images per patient of each category (a_c) out of all images per patient (b)
    share = {c: (1 if design == "paper" else len(ds)) for c, ds in groups.items()}
    b = sum(share.values())
    prob = pulp.LpProblem("petiq_sessions", pulp.LpMinimize)
    if design == "paper":
        y = {(p, d): prob.add_variable(f"y_{p}_{i}", cat="Binary") for p in range(n_p) for i, d in enumerate(doses)}
    else:
        y = {(p, d): 1 for p in range(n_p) for d in doses}
    index = {d: i for i, d in enumerate(doses)}
    x = {
        (p, d, s): prob.add_variable(f"x_{p}_{index[d]}_{s}", cat="Binary")
        for p in range(n_p)
        for d in doses
        for s in range(n_s)
    }
    r = {
        (p, d, s): prob.add_variable(f"r_{p}_{index[d]}_{s}", cat="Binary")
        for p in range(n_p)
        for d in doses
        for s in range(1, n_s)
    }

    for p in range(n_p):
        if design == "paper":
            for ds in groups.values():
                prob += pulp.lpSum(y[p, d] for d in ds) == 1
        for d in doses:
            prob += pulp.lpSum(x[p, d, s] for s in range(n_s)) == y[p, d]
            prob += pulp.lpSum(r[p, d, s] for s in range(1, n_s)) <= y[p, d]
            for s in range(1, n_s):  # a re-read comes in a later session than the first reading
                prob += r[p, d, s] <= pulp.lpSum(x[p, d, t] for t in range(s))
    prob += pulp.lpSum(r.values()) == rereads

    def reads(s, ds=doses):
        return pulp.lpSum(
            [x[p, d, s] for p in range(n_p) for d in ds] + [r[p, d, s] for p in range(n_p) for d in ds if s > 0]
        )

    lo, hi = prob.add_variable("size_lo", lowBound=0), prob.add_variable("size_hi", lowBound=0)
    for s in range(n_s):
        size = reads(s)
        prob += lo <= size
        prob += size <= hi
        if "size" not in relax:
            prob += size >= min_images
            prob += size <= max_images
        if "patient_once" not in relax:
            for p in range(n_p):
                prob += pulp.lpSum([x[p, d, s] for d in doses] + [r[p, d, s] for d in doses if s > 0]) <= 1
        if "balance" not in relax and len(groups) > 1:
            for c, ds in groups.items():  # |n_c(s) - a_c / b * N(s)| < 1
                prob += b * reads(s, ds) - share[c] * size <= b - 1
                prob += share[c] * size - b * reads(s, ds) <= b - 1
    if "reread_balance" not in relax and len(groups) > 1:
        for c, ds in groups.items():
            count = pulp.lpSum(r[p, d, s] for p in range(n_p) for d in ds for s in range(1, n_s))
            prob += b * count - share[c] * rereads <= b - 1
            prob += share[c] * rereads - b * count <= b - 1
    if "dose_spread" not in relax and design == "paper":
        for ds in groups.values():
            if len(ds) > 1:
                for d in ds:
                    chosen = pulp.lpSum(y[p, d] for p in range(n_p))
                    prob += chosen >= n_p // len(ds)
                    prob += chosen <= -(-n_p // len(ds))
    most = prob.add_variable("rereads_per_patient_max", lowBound=0)
    for p in range(n_p):
        prob += pulp.lpSum(r[p, d, s] for d in doses for s in range(1, n_s)) <= most

    free = [v for v in (*x.values(), *r.values(), *y.values()) if isinstance(v, pulp.LpVariable)]
    tie_break = rng_for(seed, "sessions", "programme").uniform(0, 0.5 / (len(free) + 1), size=len(free))
    prob += (hi - lo) + most + pulp.lpSum(float(w) * v for w, v in zip(tie_break, free))
    return prob, x, r


def _solve(prob: pulp.LpProblem, time_limit_s: float) -> bool:
    """True when a plan was found (proven best, or the best one found within the time limit)."""
    status = prob.solve(pulp.HiGHS(msg=False, timeLimit=time_limit_s, threads=1))
    if pulp.LpStatus[status] != "Optimal":
        return False
    if prob.sol_status != pulp.LpSolutionOptimal:
        log.warning(
            "session plan meets every constraint but is not proven best within %g s; "
            "it may differ on a faster or slower machine",
            time_limit_s,
        )
    return True


def _infeasible(ids, groups, design, seed, settings, time_limit_s, status) -> PetiqInputError:
    """Find which constraint family makes the programme infeasible, by leaving each out in turn."""
    if status != "Infeasible":
        return PetiqInputError(
            None,
            f"the session programme ended {status} within {time_limit_s:g} s",
            "raise the time limit, or use fewer sessions or a wider min_images/max_images range",
        )
    blamed = []
    for family in _FAMILIES:
        prob, _, _ = _build(ids, groups, design, seed=seed, relax=frozenset({family}), **settings)
        if _solve(prob, time_limit_s):
            blamed.append(family)
    if not blamed:
        return PetiqInputError(
            None,
            "no reading-session plan exists: the constraints together admit none (no single one is to blame)",
            "add sessions, widen min_images/max_images or lower rereads",
        )
    problems = [_FAMILIES[f][0].format(**settings) for f in blamed]
    fixes = [_FAMILIES[f][1] for f in blamed]
    return PetiqInputError(None, "no reading-session plan exists: " + "; or ".join(problems), "; or ".join(fixes))


def check_plan(plan: pd.DataFrame, path: str | Path | None = None) -> pd.DataFrame:
    """Validate a plan / unblinding key (columns, unique ids, readings); return it with typed columns."""
    if list(plan.columns) != list(PLAN_COLUMNS):
        raise PetiqInputError(
            path,
            f"the unblinding key has columns {list(plan.columns)}",
            f"use the columns {', '.join(PLAN_COLUMNS)} (as petiq sessions plan writes them)",
        )
    if plan.empty:
        raise PetiqInputError(path, "the unblinding key has no rows", "plan the sessions again (petiq sessions plan)")
    repeated = sorted(set(plan["blinded_id"][plan["blinded_id"].duplicated()]))
    if repeated:
        raise PetiqInputError(path, f"blinded ids {repeated} repeat", "use the key as petiq sessions plan wrote it")
    out = plan.copy()
    try:
        out["dose"] = out["dose"].astype(float)
        out["session"] = out["session"].astype(int)
    except (TypeError, ValueError):
        raise PetiqInputError(
            path, "dose or session is not a number in some row", "use the key as petiq sessions plan wrote it"
        ) from None
    bad = sorted(set(out["reading"]) - set(READINGS))
    if bad or (out["session"] < 1).any():
        raise PetiqInputError(
            path, f"readings {bad} or sessions below 1", "use the key as petiq sessions plan wrote it"
        )
    out["blinded_id"] = out["blinded_id"].astype(str)
    out["participant_id"] = out["participant_id"].astype(str)
    return out


def read_plan(path: str | Path) -> pd.DataFrame:
    """Read and check an unblinding key written by :func:`write_plan`."""
    path = Path(path)
    if not path.is_file():
        raise PetiqInputError(
            path, "the unblinding key does not exist", "plan the sessions first (petiq sessions plan)"
        )
    return check_plan(read_tsv_frame(path, "unblinding key"), path)


def write_plan(plan: pd.DataFrame, key_path: str | Path) -> None:
    """Write the unblinding key and, beside it, a README saying it must not reach the readers."""
    key_path = Path(key_path)
    check_plan(plan, key_path)
    write_tsv(key_path, plan)
    write_text(key_path.parent / "README.txt", KEY_README.format(columns=", ".join(PLAN_COLUMNS)))


def blank_form(plan: pd.DataFrame, session: int) -> pd.DataFrame:
    """The ratings form of one session: its blinded ids in reading order, everything else blank."""
    ids = sorted(plan.loc[plan["session"] == session, "blinded_id"])
    form = pd.DataFrame({c: [""] * len(ids) for c in FORM_COLUMNS})
    form["blinded_id"] = ids
    return form


def session_dir(out_dir: str | Path, session: int) -> Path:
    return Path(out_dir) / f"session-{int(session)}"


def write_session_materials(
    plan: pd.DataFrame,
    image_path: Callable[[str, float], Path],
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> list[Path]:
    """Write, per session, the reading sheets (PNG per image, one PDF) and the blank form; return the session folders.

    ``image_path(participant_id, dose)`` gives the image to show (e.g. :func:`petiq.core.bids.norm01_path` bound to
    ``results/bids``). Every image is checked to exist before anything is written. The key is not
    written here (see :func:`write_plan`): the session folders hold nothing but blinded ids.
    """
    from ..plots.sheets import write_session_sheets

    plan = check_plan(plan)
    paths = {
        bid: Path(image_path(pid, dose))
        for bid, pid, dose in zip(plan["blinded_id"], plan["participant_id"], plan["dose"])
    }
    missing = sorted({str(p) for p in paths.values() if not p.is_file()})
    if missing:
        raise PetiqInputError(
            missing[0],
            f"{len(missing)} image(s) to read do not exist (first shown)",
            "reconstruct every planned patient and dose first",
        )
    out_dir = Path(out_dir)
    sessions = sorted(plan["session"].unique())
    folders = []
    for s in sessions:
        folder = session_dir(out_dir, s)
        form = blank_form(plan, s)
        write_session_sheets(
            [(bid, paths[bid]) for bid in form["blinded_id"]],
            folder / "sheets",
            folder / f"session-{s}.pdf",
            progress=progress,
        )
        write_tsv(folder / f"session-{s}_ratings-form.tsv", form)
        folders.append(folder)
    write_text(out_dir / "README.txt", READER_README.format(n=len(sessions)))
    return folders


def session_summary(plan: pd.DataFrame) -> pd.DataFrame:
    """Readings per session and category, with first/repeat counts (for logs and the report)."""
    table = pd.crosstab(plan["session"], plan["category"]).reindex(
        columns=[c for c in CATEGORIES if c in set(plan["category"])]
    )
    table["first"] = plan[plan["reading"] == "first"].groupby("session").size()
    table["repeat"] = plan[plan["reading"] == "repeat"].groupby("session").size()
    table = table.fillna(0).astype(int)
    table["total"] = table["first"] + table["repeat"]
    return table.reset_index()
