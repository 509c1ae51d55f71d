"""From landing to frames: plan fleet batches, validate and quarantine clips, write frames Parquet.

Three steps, each idempotent so a retried run does no harm:
1. `plan_batch` + `commit_batch`: the clips in landing that no batch holds yet, deduplicated by
   content hash, become one batch (the id is derived from its clips, so two planners that see the
   same clips make the same batch). A commit writes the plan (`batches/<id>.plan.json`), claims
   each clip with a create-once `claims/<clip>` naming the plan, writes `batches/<id>.json`
   (create-once too) and deletes the plan. A clip another batch claimed first is dropped and the
   id is derived again from the clips kept; a planner left with none commits nothing (None). So
   two planners that saw different listings never share a clip. Killed anywhere in between, the
   plan record is still there: the next `plan_batch` returns it before anything new, and
   committing it again decides every claim as before (claims never change) and ends the job.
2. `validate_batch`: read every clip of a batch once (worker processes); bad ones move to
   `quarantine/` with a JSON reason beside them, and their claim is released; the frames of the
   accepted clips are staged and the accepted list is committed as `batches/<id>.accepted.json`.
   The first validation of a batch records its start (`batches/<id>.validation.json`) and reads
   no claim (none can be released before it); a later one reads each clip's claim, so that it
   leaves a clip quarantined and uploaded again since to the batch that takes it.
3. `write_frames`: the staged frames become `frames/batch=<id>/part-0.parquet`.

What may come back. A landing key is held while its claim exists: a clip of a batch (accepted or
not validated yet) or a duplicate upload. Quarantine releases the claim, so a fixed upload under
the same key is a new clip. Content is a duplicate when the same bytes were ingested under another
key (accepted by a validation, or in a batch not validated yet; a duplicate records which key, in
which batch): the bytes of a quarantined clip pass under a new key. `requeue` moves a quarantined
clip back to landing (or releases a duplicate whose original was quarantined).

Modules: `landing` (claims, ingested content, the page-at-a-time scan), `batches` (step 1),
`reading` (clips read and checked in worker processes), `validate` (step 2, and `requeue`),
`frames` (step 3). The stage's API is imported here.
"""

from flywheel.ingest.batches import BatchPlan, commit_batch, plan_batch
from flywheel.ingest.frames import frames_table, summarize_frames, write_frames
from flywheel.ingest.landing import (
    LandingScan,
    claimed,
    is_clip_key,
    list_batches,
    pending_clips,
    sha256,
)
from flywheel.ingest.reading import frames_parquet_options
from flywheel.ingest.validate import quarantine, requeue, validate_batch

__all__ = [
    "BatchPlan", "LandingScan", "claimed", "commit_batch", "frames_parquet_options", "frames_table", "is_clip_key",
    "list_batches", "pending_clips", "plan_batch", "quarantine", "requeue", "sha256", "summarize_frames",
    "validate_batch", "write_frames",
]  # fmt: skip
