"""Landing and what holds it: which uploads are clips, which a batch claimed, which content was
ingested, and the page-at-a-time scan the fresh-data sensor reads landing with (`LandingScan`, and
the cursor that carries it from one tick to the next)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import TYPE_CHECKING

from flywheel import layout
from flywheel.store import ObjectInfo, Store

# a worker process imports this package: pyarrow, pydantic and tqdm load where used
if TYPE_CHECKING:
    pass


LIST_PAGE = 1000  # keys per listing request of a `LandingScan` (the most S3 gives)


def is_clip_key(key: str) -> bool:
    """Only `*.mcap` names are clips; partial uploads and hidden files are not."""
    name = key.rsplit("/", 1)[-1]
    return (
        key.startswith(layout.LANDING)
        and name.endswith(".mcap")
        and not any(part.startswith(".") for part in key.split("/"))
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_batches(store: Store) -> list[dict]:
    """Every committed batch manifest, oldest first."""
    manifests = [
        store.read_json(o.key) for o in store.list(layout.BATCHES) if layout.is_batch_key(o.key)
    ]
    return sorted(manifests, key=lambda m: (m["created_at"], m["batch_id"]))


def claimed(store: Store) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Landing keys that some batch holds (a claim), and the content already ingested: sha256 ->
    (key, batch id) of each clip a validation accepted, or a batch not validated yet holds."""
    return all_claimed_keys(store), ingested_content(store)


def pending_clips(store: Store, claimed_keys: set[str] | None = None) -> list[ObjectInfo]:
    """Clips in landing that no batch holds yet, oldest first. Names that cannot be store keys are
    not among them: `plan_batch` quarantines those."""
    if claimed_keys is None:
        claimed_keys = all_claimed_keys(store)
    return fresh_clips(store.list(layout.LANDING), claimed_keys)


def fresh_clips(landing: list[ObjectInfo], claimed_keys: set[str]) -> list[ObjectInfo]:
    """The clips of a landing listing that no claim holds, oldest first."""
    fresh = [
        o for o in landing if is_clip_key(o.key) and not o.bad_key and o.key not in claimed_keys
    ]
    return sorted(fresh, key=lambda o: (o.mtime, o.key))


class LandingScan:
    """Landing a page at a time from a position: the clips no claim holds, from just after the key
    `after` to the end of landing, then from its start up to `after`, in key order (a round). A page
    is listed only when the taker reaches it, beside the claims of its key range (`claims/<x>` mirrors
    `landing/<x>`, so both lists run in step): taking a batch of 500 with 100k clips waiting lists
    about 500 keys of each, not 100k.

    A round, not "the keys after the last one seen": vehicles name their uploads, so a new clip may
    sort before the position. A round lists every key once, so such a clip is taken when the round
    comes to it, at the latest once the clips ahead of it are batched; and since claims are created
    once, two batches never share a clip, whatever each planner listed.

    `max_pages`: at most that many pages of landing (None: no bound). A landing that keeps every clip
    ever ingested grows without end, and a tick with fewer new clips than a batch needs would list all
    of it; bounded, such a round is spread over several scans. The clips a cut scan gave out are
    `carry`: the next scan, made with `seen=carry` and `after=` this one's `after`, gives them first
    and goes on listing from where this one stopped. A carried clip deleted since drops out when the
    plan reads it; one that another planner claimed since, when a listing passes it (if the plan
    took it first, its claim keeps it out of this batch).

    After `plan_batch`: `taken`, `after` (where the next scan starts), `carry`, and `waiting` (exact
    when `complete`, else a lower bound).
    """

    def __init__(self, store: Store, after: str = "", *, page: int | None = None, max_pages: int | None = None,
                 seen: Iterable[ObjectInfo] = ()) -> None:  # fmt: skip
        if after and not after.startswith(layout.LANDING):
            raise ValueError(
                f"a landing scan starts after a key under {layout.LANDING!r}, got {after!r}"
            )
        if max_pages is not None and max_pages < 1:
            raise ValueError(f"a landing scan lists at least one page, got max_pages={max_pages}")
        self.store, self.start, self.page, self.max_pages = (
            store,
            after,
            page or LIST_PAGE,
            max_pages,
        )
        self.seen = [o for o in seen if is_clip_key(o.key) and not o.bad_key]
        self._carried = {o.key for o in self.seen}
        self.fresh = len(
            self.seen
        )  # the carried clips and the unclaimed ones on the pages listed so far
        self.taken = 0  # the first `taken` clips given out went into the plan (set by plan_batch)
        self.gone: set[str] = set()  # carried clips found claimed, and clips the plan found deleted
        self.complete = False  # every landing key was listed: `fresh` counts all the clips waiting
        self.pages = 0  # pages of landing listed
        self.bad: list[ObjectInfo] = []  # unclaimed uploads whose name is no key, for quarantine
        self._given: list[ObjectInfo] = []
        self._listed_to = after  # the last landing key listed

    @property
    def after(self) -> str:
        """Where the next scan starts: after the last listed clip the plan took; with no plan, where
        this scan stopped listing (the start again after a whole round)."""
        taken = [o.key for o in self._given[: self.taken] if o.key not in self._carried]
        if taken:
            return taken[-1]
        return self.start if self.taken or self.complete else self._listed_to

    @property
    def carry(self) -> list[ObjectInfo]:
        """The clips the next scan gives first: with no plan and landing not all listed, every clip
        this one gave out (fewer than a batch needs, or duplicates); else the carried ones the plan
        did not take."""
        if (
            not self.taken
        ):  # not iterated at all (the plan was a commit cut short): the clips it was given
            return (
                []
                if self.complete
                else [o for o in self._given or self.seen if o.key not in self.gone]
            )
        return [
            o
            for o in self._given[self.taken :]
            if o.key in self._carried and o.key not in self.gone
        ]

    def position(self) -> dict:
        """Where the next scan goes on, for a sensor's cursor: `landing_after` and, when this scan was
        cut short by its page budget, `landing_seen` ([key, size, mtime] of the clips it carries)."""
        state: dict = {"landing_after": self.after}
        if carry := self.carry:
            state["landing_seen"] = [[o.key, o.size, o.mtime] for o in carry]
        return state

    @staticmethod
    def resume_from(state: dict) -> tuple[str, list[ObjectInfo]]:
        """(`after`, `seen`) of the next scan from a `position` (an empty state: from the start, none
        carried); ValueError when it names no landing key to go on after."""
        try:
            after = state.get("landing_after") or ""
            seen = [
                ObjectInfo(k, int(size), float(mtime))
                for k, size, mtime in state.get("landing_seen", [])
                if isinstance(k, str) and k.startswith(layout.LANDING)
            ]
        # not an object, or entries that are not [key, size, mtime]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{state!r} is no landing scan position") from None
        if not isinstance(after, str) or (after and not after.startswith(layout.LANDING)):
            raise ValueError(f"{state!r} names no landing key to go on after")
        return after, seen

    @property
    def waiting(self) -> int:
        """Clips seen that the plan did not take (nor found deleted or claimed since): all that wait if
        `complete`, else at least that many."""
        taken = {o.key for o in self._given[: self.taken]}
        return self.fresh - self.taken - len(self.gone - taken)

    def __iter__(self) -> Iterator[ObjectInfo]:
        parts = [(self.start, None), ("", self.start)] if self.start else [("", None)]
        listed = (
            o
            for i, (lo, hi) in enumerate(parts)
            for o in self._clips(lo, hi, last=i == len(parts) - 1)
        )
        for o in chain(self.seen, listed):
            self._given.append(o)
            yield o

    def _clips(self, lo: str, hi: str | None, *, last: bool) -> Iterator[ObjectInfo]:
        """The unclaimed clips with `lo < key <= hi` (None: no upper bound), a page at a time, while
        the page budget lasts."""
        claims = self._claimed(lo)
        claim: str | None = (
            ""  # the next claimed key at or after the clip at hand; "": none read yet
        )
        after, more = lo, True
        while more and (self.max_pages is None or self.pages < self.max_pages):
            objs, more = self.store.list_after(layout.LANDING, after, self.page)
            self.pages += 1
            after = objs[-1].key if objs else after
            if hi is not None and objs and objs[-1].key >= hi:
                objs, more = [o for o in objs if o.key <= hi], False
            if objs:
                self._listed_to = objs[-1].key
            if (
                hi is None and not more
            ):  # the end of landing: a scan cut from here on goes on from its start
                self._listed_to = ""
            fresh = []
            for o in objs:
                if not is_clip_key(o.key):
                    continue
                while claim is not None and claim < o.key:
                    claim = next(claims, None)
                if (
                    o.key in self._carried
                ):  # given out first; claimed since (another planner): not carried on
                    if claim == o.key:
                        self.gone.add(o.key)
                elif claim != o.key:
                    (self.bad if o.bad_key else fresh).append(o)
            self.fresh += len(fresh)
            self.complete = last and not more
            yield from fresh

    def _claimed(self, lo: str) -> Iterator[str]:
        """The landing keys after `lo` that a claim holds, in key order, a page of claims at a time."""
        after, more = layout.claim_key(lo) if lo else "", True
        while more:
            objs, more = self.store.list_after(layout.CLAIMS, after, self.page)
            after = objs[-1].key if objs else after
            yield from (layout.clip_key_of_claim(o.key) for o in objs)


def all_claimed_keys(store: Store) -> set[str]:
    """Every landing key that a claim holds (lists all of claims/)."""
    return {layout.clip_key_of_claim(o.key) for o in store.list(layout.CLAIMS)}


def accepted_clip_ids(store: Store, batch_id: str) -> dict[str, str]:
    """clip_id -> its key, of every clip a validation of another batch accepted."""
    out: dict[str, str] = {}
    for o in store.list(layout.BATCHES):
        if layout.is_batch_key(o.key) and (other := layout.batch_id_of(o.key)) != batch_id:
            report = layout.accepted_key(other)
            if store.exists(report):
                for c in store.read_json(report)["accepted"]:
                    out.setdefault(c["clip_id"], c["key"])
    return out


def ingested_content(store: Store) -> dict[str, tuple[str, str]]:
    """sha256 -> (key, batch id) of each clip a validation accepted, or a batch not validated yet
    holds; the oldest batch first."""
    listed = {o.key for o in store.list(layout.BATCHES)}
    ingested: dict[str, tuple[str, str]] = {}
    for key in sorted(listed):  # oldest batch first: ids start with their time
        if layout.is_batch_key(key):
            batch_id = layout.batch_id_of(key)
            report = layout.accepted_key(batch_id)  # once validated, what it accepted
            if report in listed:
                clips = store.read_json(report)["accepted"]
            else:
                clips = store.read_json(key)["clips"]
            for c in clips:
                ingested.setdefault(c["sha256"], (c["key"], batch_id))
    return ingested


def claim_holder(store: Store, key: str) -> str | None:
    """The batch that a landing clip's claim names, None if it has no claim."""
    try:
        return store.read_json(layout.claim_key(key))["batch_id"]
    except FileNotFoundError:
        return None


def to_json(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()
