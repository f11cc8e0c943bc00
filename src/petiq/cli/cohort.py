"""``petiq resources``, ``petiq check-patients``, ``petiq check-config``, ``petiq config-reference``: the
cohort's offline resources, the checks of a patient sheet and a config file before any work, and the
configuration reference generated from the schema."""

from __future__ import annotations


def _resources_fetch(args) -> None:
    from ..cohort.anatomy import fetch_anatomy

    folder = fetch_anatomy(args.dest, wheel=args.wheel)
    print(f"anatomy ready in {folder}")


def _check_patients(args) -> None:
    from ..cohort.patients import read_patients

    sheet = read_patients(args.sheet, scanner=args.scanner)
    counts = sheet["source"].value_counts().to_dict()
    print(f"{args.sheet}: {len(sheet)} patients ({counts}); no problems found")


def _check_config(args) -> None:
    from ..core.config import read_config_file

    keys = read_config_file(args.config)
    print(
        f"{args.config}: valid YAML, {len(keys)} top-level key(s); `snakemake -n --configfile {args.config}` checks the values"
    )


def _config_reference(args) -> None:
    import sys

    import yaml

    from ..core.config_reference import reference_table, write_reference

    schema = yaml.safe_load(open(args.schema, encoding="utf-8"))
    if args.write is None:
        print(reference_table(schema))
        return
    current = write_reference(args.write, schema, check=args.check)
    if args.check and not current:
        sys.exit(
            f"{args.write}: the key table differs from {args.schema}; run `petiq config-reference --write {args.write}`"
        )
    print(f"{args.write}: {'up to date' if current else 'rewritten'} from {args.schema}")


def register(commands) -> None:
    resources = commands.add_parser("resources", help="offline resources (anatomy atlas)")
    resources_sub = resources.add_subparsers(dest="action", required=True)
    fetch = resources_sub.add_parser("fetch", help="take the Hammers atlas and CSF map from the t1prep wheel on PyPI")
    fetch.add_argument("--dest", default="resources/anatomy", help="folder to write to (config key cohort.anatomy_dir)")
    fetch.add_argument("--wheel", default=None, help="a local t1prep-0.8.1 wheel instead of downloading it")
    fetch.set_defaults(func=_resources_fetch)

    check = commands.add_parser("check-patients", help="validate a patient sheet and report the first problem")
    check.add_argument("sheet", help="the patient sheet (TSV)")
    check.add_argument(
        "--scanner",
        default="mmr",
        choices=["mmr", "demo", "tiny"],
        help="the scanner real rows' files must be for (config key scanner; default mmr)",
    )
    check.set_defaults(func=_check_patients)
    check_config = commands.add_parser(
        "check-config", help="read a config file; a YAML error names its line (Snakemake's does not)"
    )
    check_config.add_argument("config", help="a YAML config file, e.g. config/demo.yaml")
    check_config.set_defaults(func=_check_config)
    reference = commands.add_parser(
        "config-reference", help="the table of every config key (default, reruns, description) from the schema"
    )
    reference.add_argument("--schema", default="workflow/schemas/config.schema.yaml", help="the config schema")
    reference.add_argument("--write", metavar="PAGE", help="put the table in PAGE's generated section")
    reference.add_argument("--check", action="store_true", help="with --write: only say whether PAGE is up to date")
    reference.set_defaults(func=_config_reference)
