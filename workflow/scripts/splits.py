"""Rule splits: roles by integer programme (petiq.learning.splits.assign_roles) or the user's checked file."""

from petiq.cohort.patients import read_participants
from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.learning.splits import assign_roles, check_splits

log = log_to(snakemake.log[0])
participants = read_participants(snakemake.input.participants)
counts = snakemake.params.counts
unrated = snakemake.params.unrated or {"ids": [], "roles": []}  # real patients the virtual reader cannot read
if unrated["ids"]:
    log.info("not in a rated role (%s): %s", ", ".join(unrated["roles"]), ", ".join(unrated["ids"]))
if snakemake.input.user_file:
    log.info("using the user's splits %s", snakemake.input.user_file)
    splits = check_splits(
        snakemake.input.user_file, participants, counts, unrated=unrated["ids"], rated_roles=unrated["roles"]
    )
else:
    splits = assign_roles(
        participants, counts, snakemake.params.seed, unrated=unrated["ids"], rated_roles=unrated["roles"]
    )
write_tsv(snakemake.output.tsv, splits)
log.info("roles: %s", splits["role"].value_counts().to_dict())
