"""Data splits: which patient plays which role in the experiments.

The paper uses 8 patients to train the pretext (dose) task and 1 to validate it, 7 to train the
transfer (clinical score) task, 2 to validate it and 3 to test (21 in all). :func:`assign_roles` solves
a small integer programme (PuLP with the HiGHS solver) that gives every patient one role, meets the role counts, and
keeps the roles alike: diagnoses in proportion to each role's size, and body weight and injected dose
per kg close to the cohort's mean in every role. A seeded tie-break makes the choice among equally
good splits reproducible and seed-dependent.

A user may edit the written ``splits.tsv`` and point config key ``splits.file`` at the copy;
:func:`check_splits` then validates it against the participants and the counts, and it is used as is.

Patients nobody can rate (``unrated``: real patients while the virtual reader scores the cohort,
which knows only synthetic patients' truth) take no role in ``rated_roles``: a constraint of the
programme, and an error in a user's file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pulp

from ..core.errors import PetiqInputError
from ..core.fileio import read_tsv_frame
from ..core.seeding import rng_for

ROLES = ("pretext_train", "pretext_val", "transfer_train", "transfer_val", "test")


def assign_roles(
    participants: pd.DataFrame, counts: dict[str, int], seed: int, *, unrated=(), rated_roles=()
) -> pd.DataFrame:
    """Solve the split programme; return a table (participant_id, role) in participant order.

    ``unrated``: ids that must not take any role of ``rated_roles`` (see the module docstring)."""
    _check_counts(counts, len(participants), None)
    ids = list(participants["participant_id"])
    roles = [r for r in ROLES if counts.get(r, 0) > 0]
    n = len(ids)
    diagnoses = sorted(participants["diagnosis"].astype(str).unique())

    def z(column):
        values = participants[column].astype(float).to_numpy()
        values = np.where(np.isfinite(values), values, np.nanmean(values))
        sd = values.std()
        return (values - values.mean()) / (sd if sd > 0 else 1.0)

    covariates = {"weight_kg": z("weight_kg"), "dose_per_kg": z("dose_per_kg")}
    tie_break = rng_for(seed, "splits").uniform(0, 1e-3, size=(n, len(roles)))

    prob = pulp.LpProblem("petiq_splits", pulp.LpMinimize)
    x = {(p, r): prob.add_variable(f"x_{p}_{r}", cat="Binary") for p in range(n) for r in range(len(roles))}
    dev = {}
    for p in range(n):
        prob += pulp.lpSum(x[p, r] for r in range(len(roles))) == 1
    unrated, rated = set(unrated), set(rated_roles)
    free = sum(counts.get(role, 0) for role in roles if role not in rated)
    if len(unrated & set(ids)) > free:
        raise PetiqInputError(
            None,
            f"{len(unrated & set(ids))} real patients cannot be read by the virtual reader, but the "
            f"unrated roles hold {free}",
            "give their ratings (scoring.ratings), or more "
            "pretext patients in splits.counts, or fewer rated roles in scoring.rated_roles",
        )
    for p, pid in enumerate(ids):
        if pid in unrated:
            for r, role in enumerate(roles):
                if role in rated:
                    prob += x[p, r] == 0
    for r, role in enumerate(roles):
        prob += pulp.lpSum(x[p, r] for p in range(n)) == counts[role]
        share = counts[role] / n
        for d in diagnoses:
            members = [p for p in range(n) if str(participants.iloc[p]["diagnosis"]) == d]
            expected = share * len(members)
            v = dev[("dx", r, d)] = prob.add_variable(f"dev_dx_{r}_{d}", lowBound=0)
            prob += pulp.lpSum(x[p, r] for p in members) - expected <= v
            prob += expected - pulp.lpSum(x[p, r] for p in members) <= v
        for name, values in covariates.items():
            # |sum of z-scores in the role| / role size: the role mean's distance from the cohort mean
            v = dev[(name, r)] = prob.add_variable(f"dev_{name}_{r}", lowBound=0)
            total = pulp.lpSum(float(values[p]) * x[p, r] for p in range(n))
            prob += total <= v * counts[role]
            prob += -total <= v * counts[role]
    prob += (
        pulp.lpSum(v for k, v in dev.items() if k[0] == "dx")
        + 0.5 * pulp.lpSum(v for k, v in dev.items() if k[0] != "dx")
        + pulp.lpSum(float(tie_break[p, r]) * x[p, r] for p in range(n) for r in range(len(roles)))
    )
    status = prob.solve(pulp.HiGHS(msg=False, timeLimit=60, threads=1))
    if pulp.LpStatus[status] != "Optimal":
        raise PetiqInputError(
            None,
            f"the split programme is {pulp.LpStatus[status]}",
            "check splits.counts against the number of patients",
        )
    role_of = [roles[next(r for r in range(len(roles)) if x[p, r].value() > 0.5)] for p in range(n)]
    return pd.DataFrame({"participant_id": ids, "role": role_of})


def _check_counts(counts: dict[str, int], n: int, path) -> None:
    unknown = sorted(set(counts) - set(ROLES))
    if unknown:
        raise PetiqInputError(path, f"unknown role(s) {unknown} in splits.counts", f"use the roles {', '.join(ROLES)}")
    total = sum(int(v) for v in counts.values())
    if total != n:
        raise PetiqInputError(
            path,
            f"splits.counts add up to {total} but the cohort has {n} patients",
            "make the role counts add up to the number of rows of the patient sheet",
        )


def check_splits(
    path: str | Path, participants: pd.DataFrame, counts: dict[str, int], *, unrated=(), rated_roles=()
) -> pd.DataFrame:
    """Validate a user-edited ``splits.tsv``: each patient once, known roles, counts as configured, and
    no ``unrated`` patient in a rated role."""
    path = Path(path)
    if not path.is_file():
        raise PetiqInputError(
            path,
            "the splits file does not exist",
            "correct config key splits.file, or set it to null to have petiq choose",
        )
    splits = read_tsv_frame(path, "splits file")
    if list(splits.columns) != ["participant_id", "role"]:
        raise PetiqInputError(
            path, f"columns are {list(splits.columns)}", "use exactly two columns: participant_id and role"
        )
    repeated = splits["participant_id"][splits["participant_id"].duplicated()].tolist()
    if repeated:
        raise PetiqInputError(path, f"{repeated} listed more than once", "list every patient exactly once")
    known = set(participants["participant_id"])
    listed = set(splits["participant_id"])
    if listed - known:
        raise PetiqInputError(
            path,
            f"{sorted(listed - known)} are not in the patient sheet",
            "remove them or add them to the patient sheet",
        )
    if known - listed:
        raise PetiqInputError(path, f"{sorted(known - listed)} have no role", "give every patient of the sheet a role")
    bad = sorted(set(splits["role"]) - set(ROLES))
    if bad:
        raise PetiqInputError(path, f"unknown role(s) {bad}", f"use the roles {', '.join(ROLES)}")
    _check_counts(counts, len(participants), path)
    found = splits["role"].value_counts().to_dict()
    for role in ROLES:
        if found.get(role, 0) != counts.get(role, 0):
            raise PetiqInputError(
                path,
                f"role {role} has {found.get(role, 0)} patients, the config asks for {counts.get(role, 0)}",
                "edit the roles or config key splits.counts so they agree",
            )
    wrong = splits[splits["participant_id"].isin(set(unrated)) & splits["role"].isin(set(rated_roles))]
    if len(wrong):
        raise PetiqInputError(
            path,
            f"{', '.join(wrong['participant_id'])} (real, no ratings) in a rated role "
            f"({', '.join(sorted(set(wrong['role'])))}): the virtual reader scores synthetic "
            "patients only",
            "give real patients a pretext role, or give their ratings (scoring.ratings)",
        )
    order = {pid: i for i, pid in enumerate(participants["participant_id"])}
    return splits.sort_values("participant_id", key=lambda s: s.map(order)).reset_index(drop=True)


def role_summary(participants: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Demographics per role (the cohort table)."""
    table = participants.merge(splits, on="participant_id")
    rows = []
    for role in [r for r in ROLES if r in set(table["role"])] + ["all"]:
        part = table if role == "all" else table[table["role"] == role]
        dx = part["diagnosis"].value_counts()
        rows.append(
            {
                "role": role,
                "n": len(part),
                **{f"n_{d}": int(dx.get(d, 0)) for d in sorted(table["diagnosis"].unique())},
                "female": int((part["sex"] == "F").sum()),
                "age_mean": round(part["age"].mean(), 1),
                "age_sd": round(part["age"].std(ddof=0), 1),
                "weight_kg_mean": round(part["weight_kg"].mean(), 1),
                "weight_kg_sd": round(part["weight_kg"].std(ddof=0), 1),
                "injected_mbq_mean": round(part["injected_mbq"].mean(), 1),
                "dose_per_kg_mean": round(part["dose_per_kg"].mean(), 3),
                "dose_per_kg_sd": round(part["dose_per_kg"].std(ddof=0), 3),
            }
        )
    return pd.DataFrame(rows)
