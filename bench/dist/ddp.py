"""The training models (bench.models) under DistributedDataParallel, and where a step's time goes.

Each rank of the group trains the same model (DDP broadcasts rank 0's weights) on its own batch
(weak scaling: the per-rank batch is fixed, the global batch grows with the ranks). One case
times three things, each with the group in step (bench.dist.timing):

- the DDP step: forward, backward with DDP's bucketed gradient all-reduce overlapping it, and
  the optimizer step: `time_median_s`, and throughput = world × per-rank items / step time;
- the same step under `no_sync()` (no gradient all-reduce): `compute_s`;
- the gradients' all-reduce alone, in DDP's 25 MiB buckets: `allreduce_s`.

`comm_exposed_s` = step − compute is the communication the backward pass did not hide; the
overlap is 1 − exposed / allreduce. `scaling_efficiency` = throughput / (world × throughput at
world size 1), from the world-size-1 case of the same run.

The check, before timing: every rank computes its gradients without syncing and all-reduces
their average by hand; then one DDP backward must give every rank those averaged gradients
(DDP's buckets, hooks and averaging), within the training check's tolerance for the dtype.
"""

from __future__ import annotations

import json
from typing import Any

from bench.backends.base import Unsupported
from bench.case import Case, Outcome, Settings
from bench.dist.run import (
    DdpCase,
    _broken,
    agree,
    failure_status,
    group_columns,
    result,
    torch_backend,
)
from bench.dist.session import Failed, Session
from bench.dist.timing import GroupTimes, time_in_step
from bench.models import spec
from bench.worker import one_line

BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb
SEED = 0
# world-size-1 throughput per (model, dtype, params), for scaling_efficiency
_SINGLE: dict[str, float] = {}


def _grad_vector(model: Any) -> Any:
    import torch

    return torch.cat([p.grad.detach().float().flatten() for p in model.parameters()])


def _check(session: Session, step: Any, ddp: Any, size: int) -> float:
    """Relative error of DDP's synced gradients against a hand-made average (module docstring)."""
    import torch
    import torch.distributed as dist

    from bench.workloads.base import relative_error

    group = session.group(size)
    # Unscaled (float16's loss scaling could overflow into inf grads, which the scaler would skip):
    # both backward passes compute the same thing, so the comparison stays exact in kind.
    scaler = step.scaler
    step.scaler = torch.amp.GradScaler(torch.device(session.device).type, enabled=False)
    try:
        with ddp.no_sync():
            step.loss_and_grads()
        local = _grad_vector(ddp.module)
        dist.all_reduce(local, group=group)
        expected = local / size
        step.loss_and_grads()
        got = _grad_vector(ddp.module)
        session.sync()
    finally:
        step.scaler = scaler
    return (
        relative_error(got.double().cpu().numpy(), expected.double().cpu().numpy())
        if torch.isfinite(got).all()
        else float("inf")
    )


def _buckets(model: Any, device: str) -> list[Any]:
    """Flat fp32 tensors as large as DDP's gradient buckets (the gradients stay fp32 under AMP)."""
    import torch

    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_bucket = BUCKET_BYTES // 4
    sizes = [min(per_bucket, total - start) for start in range(0, total, per_bucket)]
    return [torch.randn(n, device=device) for n in sizes]


def measure_ddp(session: Session, d: DdpCase, settings: Settings) -> tuple[Case, Outcome]:
    """Check, then time, one DDP case on its members (every member calls this)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from bench.models import torch_train
    from bench.models.torch_models import build

    n, rank, device, p = d.world, session.place.rank, session.device, d.params
    group = session.group(n)
    status, reason, error, impl, precision = "ok", "", None, "", ""
    ddp = step = buckets = None
    try:
        backend = torch_backend()
        backend.native_dtype(d.dtype, device)  # Unsupported: tf32 on a CPU, ...
        precision = backend.set_precision(d.dtype, device)  # TF32 on or off, explicitly
        cfg = spec.config(d.model, p["size"], p)
        length = p[spec.INPUT_KEY[d.model]]
        host = torch_train.make_batch(d.model, cfg, p["batch"], length, SEED + 1 + rank)
        step = torch_train.Step(build(cfg, SEED, False), p["optimizer"], device, d.dtype, host)
        impl = "ddp, " + torch_train._impl(step, p)
        session.guard.arm("DDP's start (rank 0's weights broadcast)")
        ids = [session.place.local_rank] if device != "cpu" else None
        ddp = DistributedDataParallel(step.model, device_ids=ids, process_group=group)
        step.model = ddp
        session.guard.arm("the gradient check")
        error = _check(session, step, ddp, n)
        if not error <= torch_train.tolerance(d.model, d.dtype):
            status, reason = "incorrect", f"DDP's averaged gradients are off by {error:.3g}"
        buckets = _buckets(ddp.module, device)
    except Failed:
        raise
    except Unsupported as exc:
        status, reason = "skipped", str(exc)
    except Exception as exc:
        if _broken(exc):
            session.fail(exc)
        status, reason = failure_status(exc), one_line(exc)
    agreed = agree(session, n, status, reason, error)
    times: GroupTimes | None = None
    columns: dict[str, Any] = {}
    if agreed.status == "ok" and step is not None and ddp is not None and buckets is not None:
        times, columns = _time(session, d, settings, step, ddp, buckets, group)
    columns = group_columns(session, n, times) | columns
    del ddp, step, buckets
    if device != "cpu":
        torch.cuda.empty_cache()
    params = {**p, "world_size": n}
    return result(
        session,
        "ddp",
        d.model,
        d.dtype,
        params,
        settings,
        agreed,
        times,
        columns,
        tolerance=torch_train.tolerance(d.model, d.dtype),
        impl=impl,
        precision=precision,
    )


def _time(
    session: Session,
    d: DdpCase,
    settings: Settings,
    step: Any,
    ddp: Any,
    buckets: list[Any],
    group: Any,
) -> tuple[GroupTimes, dict[str, Any]]:
    """The step's times, and the columns that split them (see the module docstring)."""
    import torch.distributed as dist

    n = d.world

    def local_step() -> Any:
        with ddp.no_sync():
            loss = step.loss_and_grads()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        return loss

    def allreduce() -> None:
        works = [dist.all_reduce(b, group=group, async_op=True) for b in buckets]
        for work in works:
            work.wait()

    times = time_in_step(session, n, step.run, settings, "DDP steps")
    compute = time_in_step(session, n, local_step, settings, "steps without sync")
    comm = time_in_step(session, n, allreduce, settings, "the gradient all-reduce")
    step_s, compute_s = times.median_s, compute.median_s
    items, _ = _items(d)
    throughput = items / step_s
    key = json.dumps([d.model, d.dtype, d.params], sort_keys=True)
    if n == 1:
        _SINGLE[key] = throughput
    single = _SINGLE.get(key)
    columns = {
        "compute_s": compute_s,
        "comm_exposed_s": step_s - compute_s,
        "allreduce_s": comm.median_s,
        "grad_bytes": sum(b.numel() * b.element_size() for b in buckets),
        "scaling_efficiency": throughput / (n * single) if single else None,
    }
    return times, columns


def _items(d: DdpCase) -> tuple[int, str]:
    from bench.workloads.dist import ddp_items

    return ddp_items({**d.params, "world_size": d.world})
