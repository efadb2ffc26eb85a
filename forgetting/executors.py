"""Where a sweep's runs execute: worker processes on this machine, or Ray tasks (here or on a cluster).

Both call ``run_one`` on each config and hand every ``Outcome`` to ``on_result`` as it comes; a
worker that dies (killed, out of memory) is retried up to ``MAX_ATTEMPTS`` times, then reported
failed. A run is claimed by the process that runs it (``forgetting.claim``); the claim of a
worker that died is taken over by the retry.

Workers die with their sweep: an interrupted driver (Ctrl-C, SIGTERM) signals its workers, whose
current run ends marked interrupted, and no worker starts another run after that; a driver that
is killed outright (SIGKILL) is noticed by its workers (the kernel's parent-death signal on
Linux, and a check of the parent every ``PARENT_CHECK_S`` seconds everywhere), which do the same
and exit. Embedded Ray (no cluster address) opens network ports: Ray 2.60's GCS, raylet and
workers listen on every interface, and ``ray.init`` turns a loopback node address back into the
machine's (measured; no setting of ``ray.init`` changes it), so the README says to use it on a
trusted network only; the process executor opens none.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import RunConfig
from .errors import BadInput

EXECUTORS = ("process", "ray", "slurm")  # slurm: forgetting/executors_slurm.py (submitit)
MAX_ATTEMPTS = 2  # a run whose worker process dies (killed, out of memory) is tried this many times


@dataclass
class Outcome:
    run_id: str
    status: str  # complete, skipped (found complete by the worker), busy (claimed by
    # another live process: left to it), failed, interrupted
    error: str | None = None
    seconds: float = 0.0


PARENT_CHECK_S = 0.5
# In a worker process: whether the sweep told it to stop (its driver interrupted or gone), and
# whether a run is going (a stop signal then interrupts it; between runs the worker starts none).
_stopping = False
_running = False
_parent: int | None = None


def _stop(signum, frame) -> None:
    """SIGINT or SIGTERM in a worker: the run going ends as interrupted, no other starts."""
    global _stopping
    first = not _stopping
    _stopping = True
    if _running and first:
        raise KeyboardInterrupt
    if not _running and _parent is not None and os.getppid() != _parent:
        os._exit(130)  # an orphan with nothing to finish


def _watch_parent() -> None:
    """Signal this worker when its driver is gone (SIGKILL leaves no other trace); exit once no run goes."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != _parent:
            if not _stopping:
                os.kill(os.getpid(), signal.SIGTERM)
            elif not _running:
                os._exit(130)


def _die_with_parent(parent: int) -> None:
    """Worker initializer: stop signals handled by ``_stop``; SIGTERM from the kernel when the driver dies
    (Linux), and a thread that checks the parent anyway."""
    global _parent
    _parent = parent
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the thread alone
    if os.getppid() != parent:  # the driver died before the line above
        os._exit(130)
    threading.Thread(target=_watch_parent, name="parent check", daemon=True).start()


def run_one(config: dict, threads: int = 1) -> Outcome:
    """Run one config (resuming from its last task boundary where it can); never raises. In a worker
    of a sweep that was interrupted, it runs nothing."""
    global _running
    cfg = RunConfig.from_dict(config)
    if _stopping:
        return Outcome(cfg.run_id, "interrupted", "the sweep was interrupted before this run started")
    from .claim import RunBusy, check_free

    try:  # a run another live process holds: left to it before torch is even imported (a SLURM task ends at once)
        check_free(Path(cfg.results_dir) / cfg.run_id)
    except RunBusy as e:
        return Outcome(cfg.run_id, "busy", str(e))
    import torch

    from .gc_freeze import freeze_after_imports
    from .running import run_experiment

    freeze_after_imports()  # a worker process (or a Ray or SLURM task's): its imports are never scanned again
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    _running = True
    try:
        _, _, status = run_experiment(cfg, resume=True, resolved=True)  # resolved by the sweep, sent as a dict
    except RunBusy as e:
        return Outcome(cfg.run_id, "busy", str(e), time.perf_counter() - t0)
    except KeyboardInterrupt:
        return Outcome(cfg.run_id, "interrupted", "interrupted", time.perf_counter() - t0)
    except BaseException as e:  # noqa: BLE001 - one run's failure must not stop the sweep
        return Outcome(cfg.run_id, "failed", " ".join(f"{type(e).__name__}: {e}".split()), time.perf_counter() - t0)
    finally:
        _running = False
    return Outcome(cfg.run_id, status, None, time.perf_counter() - t0)


def _died(config: RunConfig, why: str) -> Outcome:
    return Outcome(config.run_id, "failed", why)


def execute_processes(configs: list[RunConfig], workers: int, threads: int,
                      on_result: Callable[[Outcome], None]) -> None:
    """Worker processes (spawn: no inherited torch state), one run each at a time.

    A worker that dies (SIGKILL, out of memory) breaks the pool: the runs it took down are
    submitted again to a fresh pool, up to MAX_ATTEMPTS times each.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    attempts: dict[str, int] = {}
    pending = list(configs)
    while pending:
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the workers, read when torch loads
        pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx,
                                   initializer=_die_with_parent, initargs=(os.getpid(),))
        broken = []
        try:
            try:
                futures = {pool.submit(run_one, c.to_dict(), threads): c for c in pending}
            finally:
                if saved is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = saved
            for fut in as_completed(futures):
                config = futures[fut]
                try:
                    on_result(fut.result())
                except BrokenProcessPool:
                    broken.append(config)
                except Exception as e:  # noqa: BLE001 - e.g. a result that could not be sent back
                    on_result(_died(config, f"{type(e).__name__}: {e}"))
        except KeyboardInterrupt:  # the driver was interrupted: the workers' runs end, none starts
            for proc in list((pool._processes or {}).values()):
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, AttributeError, TypeError):
                    pass
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        pending = []
        for config in broken:
            attempts[config.run_id] = attempts.get(config.run_id, 0) + 1
            if attempts[config.run_id] >= MAX_ATTEMPTS:
                on_result(_died(config, "its worker process died (killed, or out of memory)"))
            else:
                pending.append(config)


def import_ray():
    try:
        import ray
    except ImportError:
        raise BadInput("--executor ray needs the [ray] extra (ray not installed): pip install 'forgetting[ray]' "
                       "(or use --executor process)") from None
    return ray


def execute_ray(configs: list[RunConfig], workers: int, threads: int, address: str | None,
                on_result: Callable[[Outcome], None]) -> None:
    """Ray tasks: embedded on this machine (``workers`` CPUs) or on the cluster at ``address``.

    Embedded, the workers import this very checkout (PYTHONPATH); on a cluster this package is
    shipped to the nodes with the tasks (``py_modules``), which need its dependencies installed.
    """
    ray = import_ray()
    package_dir = Path(__file__).resolve().parent
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(package_dir)]})
    else:
        path = os.pathsep.join(p for p in (str(package_dir.parent), os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=workers, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    pending = {}
    try:
        task = ray.remote(num_cpus=threads, max_retries=MAX_ATTEMPTS - 1)(run_one)
        pending = {task.remote(c.to_dict(), threads): c for c in configs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            config = pending.pop(done[0])
            try:
                on_result(ray.get(done[0]))
            except Exception as e:  # noqa: BLE001 - the worker died or the task could not run
                on_result(_died(config, " ".join(f"{type(e).__name__}: {e}".split())[:500]))
    except KeyboardInterrupt:  # no task starts; a running one gets KeyboardInterrupt and ends as interrupted
        for ref in pending:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished
                pass
        raise
    finally:
        ray.shutdown()
