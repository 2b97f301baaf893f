"""What each process of a running stack costs: CPU seconds and peak memory (RSS, PSS) per process type,
sampled with psutil, and the whole machine's CPU beside it (bench.scale)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import psutil
import requests

from serving.torchserve import ServerInfo, read_keys

__all__ = ["ProcessMonitor", "model_worker_pids"]


def model_worker_pids(ts: ServerInfo) -> dict[int, str]:
    """TorchServe's model worker processes: pid -> model (from the management API)."""
    headers = {"Authorization": f"Bearer {read_keys(ts.workdir).management}"}
    out: dict[int, str] = {}
    for model in ts.models:
        r = requests.get(f"{ts.management_url}/models/{model}", headers=headers, timeout=10)
        r.raise_for_status()
        for worker in r.json()[0].get("workers", []):
            if worker.get("pid"):
                out[int(worker["pid"])] = model
    return out


@dataclass
class _Sample:
    kind: str
    cpu_first: float
    cpu_last: float
    rss_max: int = 0
    pss_max: int = 0


class ProcessMonitor:
    """Samples CPU time and memory of every process of the stack (psutil) until stopped."""

    def __init__(self, kinds: dict[int, str], roots: dict[int, str], interval_s: float = 2.0) -> None:
        self.fixed = kinds  # pid -> process type, for processes known by pid
        self.roots = roots  # pid -> process type for it and its descendants (unless classified otherwise)
        self.interval_s = interval_s
        self.samples: dict[int, _Sample] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.busy_s = [0.0, 0.0]  # the whole machine's busy CPU seconds at start and stop
        self.everyone: list[dict[int, tuple[str, float]]] = [{}, {}]  # every process's CPU s at start and stop
        self.own_children_s = [0.0, 0.0]  # this process's finished subprocesses (database polls, manage.py)

    @staticmethod
    def _everyone() -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            t = p.info["cpu_times"]
            if t is not None:
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
                out[p.pid] = (cmd[:100], t.user + t.system)
        return out

    @staticmethod
    def _own_children_s() -> float:
        t = psutil.Process().cpu_times()
        return float(t.children_user + t.children_system)

    @staticmethod
    def _machine_busy_s() -> float:
        t = psutil.cpu_times()
        return float(
            sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        )

    def _classify(self) -> dict[int, str]:
        kinds: dict[int, str] = {}
        for root, kind in self.roots.items():
            try:
                proc = psutil.Process(root)
                family = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in family:
                kinds.setdefault(p.pid, kind)
        for pid, kind in self.fixed.items():
            kinds[pid] = kind
        return kinds

    def _classify_gunicorn(self, kinds: dict[int, str]) -> dict[int, str]:
        for pid, kind in list(kinds.items()):
            if kind == "web":
                try:
                    parent = psutil.Process(pid).ppid()
                except psutil.NoSuchProcess:
                    continue
                kinds[pid] = (
                    "web (gunicorn worker)"
                    if kinds.get(parent) in ("web", "web (gunicorn master)")
                    else ("web (gunicorn master)")
                )
        return kinds

    def sample(self) -> None:
        kinds = self._classify_gunicorn(self._classify())
        for pid, kind in kinds.items():
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu = t.user + t.system
                    mem = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            s = self.samples.get(pid)
            if s is None:
                s = self.samples[pid] = _Sample(kind, cpu, cpu)
            s.kind = kind
            s.cpu_last = cpu
            s.rss_max = max(s.rss_max, mem.rss)
            s.pss_max = max(s.pss_max, getattr(mem, "pss", mem.rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self.sample()  # the CPU times at the start of the window
        self.busy_s[0] = self._machine_busy_s()
        self.everyone[0] = self._everyone()
        self.own_children_s[0] = self._own_children_s()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.busy_s[1] = self._machine_busy_s()
        self.everyone[1] = self._everyone()
        self.own_children_s[1] = self._own_children_s()

    def machine(self, window_s: float) -> dict[str, Any]:
        """Cores the whole machine was busy; how much of it went to the benchmark's own subprocesses
        (database polls), and to other processes (someone else's work: the busiest named)."""
        busy = self.busy_s[1] - self.busy_s[0]
        stack = sum(s.cpu_last - s.cpu_first for s in self.samples.values())
        own = self.own_children_s[1] - self.own_children_s[0]
        before, after = self.everyone
        others = {
            pid: (cmd, cpu - before.get(pid, ("", 0.0))[1])
            for pid, (cmd, cpu) in after.items()
            if pid not in self.samples
        }
        top = sorted(others.values(), key=lambda v: -v[1])[:5]
        return {
            "busy_cores": round(busy / window_s, 3),
            "bench_subprocesses_cores": round(own / window_s, 3),
            "outside_stack_cores": round(max(0.0, busy - stack - own) / window_s, 3),
            "outside_busiest": [{"cmd": c, "cores": round(v / window_s, 3)} for c, v in top if v > 0.01 * window_s],
        }

    def summary(self, window_s: float, analyses: int) -> dict[str, Any]:
        """Per process type: processes, CPU seconds, cores (CPU s / window), CPU ms per analysis,
        peak RSS per process, summed peak PSS."""
        out: dict[str, Any] = {}
        by_kind: dict[str, list[_Sample]] = {}
        for s in self.samples.values():
            by_kind.setdefault(s.kind, []).append(s)
        for kind, samples in sorted(by_kind.items()):
            cpu = sum(s.cpu_last - s.cpu_first for s in samples)
            rss = [s.rss_max / 2**20 for s in samples]
            out[kind] = {
                "processes": len(samples),
                "cpu_s": round(cpu, 1),
                "cores": round(cpu / window_s, 3) if window_s else None,
                "cpu_ms_per_analysis": round(1000 * cpu / analyses, 1) if analyses else None,
                "rss_mb_per_process": round(sum(rss) / len(rss), 1),
                "rss_mb_max": round(max(rss), 1),
                "pss_mb_total": round(sum(s.pss_max for s in samples) / 2**20, 1),
            }
        return out
