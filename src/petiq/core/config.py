"""The workflow's configuration, checked while Snakemake parses it, so ``snakemake -n`` stops
with the key, the value, the reason and the fix before any job starts.

Two layers: :func:`schema_problems` turns JSON-schema failures into one line per key (an
unknown key names its valid neighbours; no schema dump), and :func:`config_problems` checks what
a schema cannot: values against the patient sheet, the scanner preset's image grid, files on
disk and the feasibility of the reading sessions.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import PetiqInputError


def read_config_file(path: str | Path) -> dict:
    """A YAML config file as a dict; a syntax error names the file, the line and the column.

    Snakemake's own message for a broken YAML file names neither the file nor the line (a tab in
    the indentation is the usual cause)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise PetiqInputError(
            path, f"cannot be read as UTF-8 text ({error})", "save the config file as UTF-8 YAML"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        fix = (
            "indent with spaces only, YAML does not allow tabs"
            if "\t" in line[: (mark.column + 1) if mark else None] or "tab" in str(error)
            else "correct the YAML syntax there (indentation, a missing ':' or an unclosed quote or bracket)"
        )
        raise PetiqInputError(path, f"{where}not valid YAML ({error.problem})", fix) from None
    except yaml.YAMLError as error:
        raise PetiqInputError(path, f"not valid YAML ({error})", "correct the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PetiqInputError(
            path, f"holds a {type(data).__name__}, not a mapping of config keys", "write one `key: value` per line"
        )
    return data


def _key(path: Iterable) -> str:
    """``experiments.backbones[0]``: the config key of a schema path."""
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key or "(top level)"


def _describe(schema: Mapping) -> str:
    """What a sub-schema accepts, in words: ``a whole number from 0 to 5``, ``'pretext'``."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    kind = {
        "integer": "a whole number",
        "number": "a number",
        "string": "a string",
        "array": "a list",
        "null": "null",
    }.get(schema.get("type"), str(schema.get("type", "a value")))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f"{kind} from {low} to {high}"
    if low is not None:
        return f"{kind} >= {low}"
    return kind


def _first_sentence(text: str | None) -> str:
    """The description's first sentence (``Fig. 9`` and ``e.g.`` do not end one)."""
    text = " ".join((text or "").split())
    sentence = re.split(r"(?<!Fig)(?<!Figs)(?<!e\.g)(?<!i\.e)\. ", text)[0] if text else ""
    return sentence.rstrip(".")


def schema_problems(config: Mapping, schema: Mapping) -> list[str]:
    """One line per schema failure: ``config key a.b: problem. Fix: ...``; [] when the config is valid."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    lines = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = list(error.absolute_path)
        if error.validator == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            for extra in sorted(set(error.instance) - set(known)):
                near = difflib.get_close_matches(str(extra), known, n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(near)}?" if near else f"the keys here are {', '.join(known)}"
                lines.append(
                    str(PetiqInputError(None, f"config key {_key([*where, extra])} is not a petiq setting", hint))
                )
            continue
        problem = error.message
        description = _first_sentence(error.schema.get("description"))
        fix = (
            f"{description} (workflow/schemas/config.schema.yaml)"
            if description
            else "see workflow/schemas/config.schema.yaml"
        )
        if error.validator == "enum":
            allowed = [str(v) for v in error.validator_value]
            near = difflib.get_close_matches(str(error.instance), allowed, n=2, cutoff=0.6)
            problem = f"{error.instance!r} is not one of the choices"
            fix = (f"did you mean {' or '.join(near)}? " if near else "") + f"use one of {', '.join(allowed)}"
        elif error.validator == "minItems":
            problem = f"{error.instance!r} has {len(error.instance)} item(s)"
            fix = f"give at least {error.validator_value}" + (f" ({description})" if description else "")
        elif error.validator in ("anyOf", "oneOf"):
            problem = f"{error.instance!r} is not allowed here"
            fix = "use " + " or ".join(_describe(sub) for sub in error.validator_value)
        lines.append(str(PetiqInputError(None, f"config key {_key(where)}: {problem}", fix)))
    return lines


def _problem(key: str, problem: str, fix: str, path=None) -> PetiqInputError:
    where = f"config key {key}: " if path is None else f"(config key {key}) "
    return PetiqInputError(path, where + problem, fix)


def config_problems(config: Mapping, subjects: list[str], *, root: str | Path = ".") -> list[PetiqInputError]:
    """What the schema cannot check: every problem found, each naming its config key.

    ``subjects``: the participant ids of the patient sheet. ``root``: the folder relative paths of
    the config are read from (Snakemake's working directory).
    """
    import pandas as pd

    from ..learning.splits import ROLES, check_splits
    from ..scanner.geometry import Scanner
    from ..scoring.sessions import check_session_settings

    root = Path(root)
    problems: list[PetiqInputError] = []
    n = len(subjects)

    chosen = config["figures"].get("fig01_subjects")
    if chosen is not None:
        unknown = [s for s in chosen if s not in subjects]
        if unknown or len(chosen) != 2:
            problems.append(
                _problem(
                    "figures.fig01_subjects",
                    f"{chosen} "
                    + (
                        f"names {unknown}, not in the patient sheet"
                        if unknown
                        else f"holds {len(chosen)} patients, Fig. 1 shows two"
                    ),
                    f"give two of {', '.join(subjects[:6])}…, or null",
                )
            )

    counts = config["splits"]["counts"]
    user_splits = config["splits"].get("file")
    if user_splits:
        try:
            check_splits(root / user_splits, pd.DataFrame({"participant_id": subjects}), counts)
        except PetiqInputError as error:
            problems.append(_problem("splits.file", error.problem, error.fix, path=user_splits))
    elif sum(counts.values()) != n:
        problems.append(
            _problem(
                "splits.counts",
                f"the roles add up to {sum(counts.values())} patients but the patient sheet has {n}",
                "make the role counts add up to the number of rows of the patient sheet",
            )
        )

    n_transfer = counts["transfer_train"]  # what plan_experiments sizes Fig. 9's subsets from
    too_many = [c for c in config["experiments"]["patient_counts"] if c > n_transfer]
    if too_many:
        problems.append(
            _problem(
                "experiments.patient_counts",
                f"{too_many} exceed the {n_transfer} transfer_train patient(s) that Fig. 9's subsets are drawn from",
                f"use counts up to {n_transfer}, or raise splits.counts.transfer_train",
            )
        )

    scanner = Scanner.from_name(config["scanner"])
    size = config["patches"]["size"]
    if size > max(scanner.image_shape):
        problems.append(
            _problem(
                "patches.size",
                f"{size}-voxel patches are larger than every side of the {config['scanner']} images "
                f"({'x'.join(map(str, scanner.image_shape))} voxels)",
                f"use at most {max(scanner.image_shape)} (paper 80 on the mMR)",
            )
        )

    weights = config["training"].get("imagenet_weights")
    if weights and not (root / weights).is_file():
        problems.append(
            _problem(
                "training.imagenet_weights",
                f"{weights} does not exist",
                "give the path of an ImageNet checkpoint, or null to use what `petiq weights fetch` wrote",
            )
        )

    scoring = config["scoring"]
    ratings = scoring.get("ratings")
    if ratings is not None and not (root / ratings).is_file():
        problems.append(
            _problem(
                "scoring.ratings",
                f"{ratings} does not exist",
                f"write it from the filled forms with `petiq ratings import --forms … --key … --out {ratings}`, "
                "or set scoring.ratings: null for the virtual reader",
            )
        )
    if ratings is None:
        raters = [str(r + 1) for r in range(scoring["raters"])]
        if str(scoring["label_rater"]) not in raters:
            problems.append(
                _problem(
                    "scoring.label_rater",
                    f"{scoring['label_rater']!r} is not one of the virtual raters {', '.join(raters)}",
                    f"use one of {', '.join(raters)} (or raise scoring.raters)",
                )
            )
    n_rated = sum(counts.get(role, 0) for role in scoring["rated_roles"] if role in ROLES)
    names = {
        "n_sessions": "scoring.sessions.count",
        "min_images": "scoring.sessions.min_size",
        "max_images": "scoring.sessions.max_size",
        "rereads": "scoring.rereads",
    }
    try:
        check_session_settings(
            [f"patient-{i}" for i in range(n_rated)],
            config["doses"],
            scoring["design"],
            scoring["rereads"],
            scoring["sessions"]["count"],
            scoring["sessions"]["min_size"],
            scoring["sessions"]["max_size"],
            names=names,
        )
    except PetiqInputError as error:
        problems.append(_problem("scoring.sessions", error.problem, error.fix))
    return problems


def check_label_rater(label_rater: str, ratings, path) -> None:
    """Real ratings: the label rater must be one of the raters in the table."""
    raters = sorted(set(ratings["rater"].astype(str)))
    if str(label_rater) not in raters:
        raise _problem(
            "scoring.label_rater",
            f"{label_rater!r} matches no rater in {path} (raters: {', '.join(raters)})",
            f"set scoring.label_rater to one of {', '.join(raters)}",
        )
