"""Where the pod's plan comes from: a file (standalone) or its plan ConfigMap (in cluster).

Both sources yield every new PodPlan with a newer generation. A plan whose `formatVersion`
this gateway does not understand (or that does not parse, does not validate, is for another
ordinal or another quota than the plans before it, or has a lower generation than the plan in
force) is logged and yielded as a `PlanError` (so status and report can say why), never
applied: the gateway keeps enforcing its last good plan. The same generation again (the
operator rewriting a deleted ConfigMap) is no error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import ValidationError

from connquota.api.plan import FORMAT_VERSION, PodPlan, QuotaPlan, QuotaRef

log = logging.getLogger(__name__)

PLAN_KEY = "plan.json"


class PlanError(ValueError):
    """A plan this gateway cannot enforce (the last good plan stays in force)."""


def parse_plan(text: str | bytes, ordinal: int) -> PodPlan:
    """The PodPlan of `ordinal` in `text` (a PodPlan or a QuotaPlan, JSON; bytes: UTF-8)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanError(f"plan is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"plan is not JSON: {exc}") from None
    except RecursionError:
        raise PlanError("plan is not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise PlanError("plan is not a JSON object")
    version = doc.get("formatVersion")
    if version != FORMAT_VERSION:
        raise PlanError(f"unknown plan formatVersion {version!r} (this gateway: {FORMAT_VERSION})")
    try:
        if "pods" in doc:
            quota_plan = QuotaPlan.model_validate(doc, extra="ignore")
            for pod in quota_plan.pods:
                if pod.ordinal == ordinal:
                    return pod
            raise PlanError(f"the quota plan has no pod with ordinal {ordinal}")
        plan = PodPlan.model_validate(doc, extra="ignore")
    except ValidationError as exc:
        raise PlanError(f"plan does not validate: {exc.error_count()} errors") from None
    if plan.ordinal != ordinal:
        raise PlanError(f"plan is for ordinal {plan.ordinal}, this gateway is {ordinal}")
    return plan


class NewerPlans:
    """Keeps only plans newer than the last good one."""

    def __init__(self) -> None:
        self.generation: int | None = None
        self.quota: QuotaRef | None = None
        """The quota of the first good plan: every later plan must be for the same quota."""
        self.last_error = ""

    def accept(self, text: str | bytes, ordinal: int) -> PodPlan | None:
        """The plan in `text` if it is valid and newer; None (and `last_error`) otherwise."""
        try:
            plan = parse_plan(text, ordinal)
            if self.quota is not None and plan.quota != self.quota:
                raise PlanError(f"plan is for quota {plan.quota}, this gateway serves {self.quota}")
            if self.generation is not None and plan.generation < self.generation:
                raise PlanError(
                    f"plan generation {plan.generation} is older than generation "
                    f"{self.generation} in force (generations only grow)"
                )
        except PlanError as exc:
            if str(exc) != self.last_error:
                log.error("ignoring plan: %s; keeping the last good plan", exc)
            self.last_error = str(exc)
            return None
        self.last_error = ""
        if self.generation is not None and plan.generation <= self.generation:
            return None
        self.generation = plan.generation
        self.quota = plan.quota
        return plan


async def watch_plan_file(
    path: Path, ordinal: int, poll_s: float = 0.2
) -> AsyncIterator[PodPlan | PlanError]:
    """Yield the file's plan now and every newer generation written to it later (and a
    PlanError for each plan text that cannot be enforced)."""
    newer = NewerPlans()
    last_sig: tuple[int, int] | None = None
    while True:
        try:
            st = await asyncio.to_thread(path.stat)
            sig = (st.st_mtime_ns, st.st_size)
            if sig != last_sig:
                last_sig = sig
                text = await asyncio.to_thread(path.read_bytes)  # parse_plan decodes it
                plan = newer.accept(text, ordinal)
                if plan is not None:
                    yield plan
                elif newer.last_error:
                    yield PlanError(newer.last_error)
        except FileNotFoundError:
            if last_sig is not None:
                log.warning("plan file %s disappeared; keeping the last good plan", path)
            last_sig = None
        await asyncio.sleep(poll_s)


async def watch_plan_configmap(
    namespace: str, name: str, ordinal: int
) -> AsyncIterator[PodPlan | PlanError]:
    """Yield the ConfigMap's plan and every newer generation (a watch in a thread), and a
    PlanError for each plan text that cannot be enforced."""
    from kubernetes import client

    from connquota.gateway.kube_watch import watch_events
    from connquota.gateway.podroot import load_cluster_config

    load_cluster_config()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    stop = threading.Event()

    def run() -> None:
        api = client.CoreV1Api()
        while not stop.is_set():
            try:
                cm = api.read_namespaced_config_map(name, namespace, _request_timeout=10)
                loop.call_soon_threadsafe(queue.put_nowait, (cm.data or {}).get(PLAN_KEY, ""))
                for kind, obj in watch_events(
                    api.list_namespaced_config_map,
                    namespace,
                    cm.metadata.resource_version if cm.metadata else None,
                    stop,
                    field_selector=f"metadata.name={name}",
                ):
                    if kind in ("ADDED", "MODIFIED"):
                        loop.call_soon_threadsafe(
                            queue.put_nowait, (obj.data or {}).get(PLAN_KEY, "")
                        )
            except Exception as exc:  # the API may be away; keep the last good plan
                log.warning("plan ConfigMap %s/%s: %s", namespace, name, type(exc).__name__)
                stop.wait(1.0)

    thread = threading.Thread(target=run, name="plan-watch", daemon=True)
    thread.start()
    newer = NewerPlans()
    try:
        while True:
            text = await queue.get()
            if not text:
                continue
            plan = newer.accept(text, ordinal)
            if plan is not None:
                yield plan
            elif newer.last_error:
                yield PlanError(newer.last_error)
    finally:
        stop.set()
