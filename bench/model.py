"""Read access to a results document (what results.json holds).

The report, the targets and the plots all work from the JSON-able document
alone, so that ``python -m bench --render results.json`` redraws them
without running anything.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from .workloads import METRICS, Metric


class ResultSet:
    """Index over ``{"meta", "impls", "workloads", "cells"}``."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.data = data
        self.meta: Dict[str, Any] = data.get("meta", {})
        self.impls: List[Dict[str, Any]] = data.get("impls", [])
        self.workloads: List[Dict[str, Any]] = data.get("workloads", [])
        self._cells: Dict[Tuple[str, str, str], Dict[str, Any]] = {
            (c["workload"], c["point"], c["impl"]): c for c in data.get("cells", [])}

    # -- lookups -----------------------------------------------------------

    def has_workload(self, key: str) -> bool:
        """Whether workload ``key`` was run."""
        return any(w["key"] == key for w in self.workloads)

    def workload(self, key: str) -> Dict[str, Any]:
        """The workload description; KeyError if it was not run."""
        for workload in self.workloads:
            if workload["key"] == key:
                return workload
        raise KeyError(f"workload {key!r} was not run")

    def impl(self, key: str) -> Optional[Dict[str, Any]]:
        """The implementation description, or None."""
        return next((i for i in self.impls if i["key"] == key), None)

    def cell(self, workload: str, point: str, impl: str) -> Optional[Dict[str, Any]]:
        """One cell, or None (not run, or not applicable)."""
        return self._cells.get((workload, point, impl))

    def impls_of(self, workload: str) -> List[str]:
        """Implementations with at least one cell in ``workload``, report order."""
        present = {k[2] for k in self._cells if k[0] == workload}
        return [i["key"] for i in self.impls if i["key"] in present]

    def value(self, workload: str, point: str, impl: str,
              metric: Optional[str] = None) -> Optional[float]:
        """The median of ``metric`` (default: the primary one), None if unknown."""
        cell = self.cell(workload, point, impl)
        if cell is None or cell["status"] != "ok":
            return None
        value = cell["median"].get(metric or self.primary(workload).key)
        return None if value is None or math.isnan(value) else float(value)

    def metric(self, workload: str, key: str) -> Metric:
        """Metric ``key`` named for ``workload``'s unit of work."""
        op = self.workload(workload).get("op") or ("round trip", "round trips")
        return METRICS[key].for_op(op)

    def primary(self, workload: str) -> Metric:
        """The workload's primary metric."""
        return self.metric(workload, self.workload(workload)["metrics"][0])

    def efficiency(self, workload: str) -> Optional[Metric]:
        """The workload's server-CPU-per-work metric, if it has one."""
        key = self.workload(workload).get("efficiency")
        return self.metric(workload, key) if key else None

    # -- comparison ----------------------------------------------------------

    def baseline(self, workload: str, point: str) -> Optional[str]:
        """The implementation ratios are taken against at ``point``: the first
        of the workload's baselines that produced a number there."""
        for key in self.workload(workload)["baselines"]:
            if self.value(workload, point, key) is not None:
                return str(key)
        return None

    def ratio(self, workload: str, point: str, impl: str, metric: Optional[str] = None,
              against: Optional[str] = None) -> Optional[float]:
        """``impl``'s ``metric`` (default: primary) over ``against``'s (default:
        the baseline's), at ``point``."""
        base_key = against or self.baseline(workload, point)
        if base_key is None:
            return None
        mine = self.value(workload, point, impl, metric)
        base = self.value(workload, point, base_key, metric)
        return mine / base if mine is not None and base else None

    def pollchat_key(self, minor: Optional[str] = None, tree: str = "current"
                     ) -> Optional[str]:
        """The pollchat implementation the targets are about: of ``tree``,
        under Python ``minor`` (e.g. ``"3.13"``; default: the harness's, i.e.
        no interpreter suffix), on epoll if it ran, else the first backend
        that did; one process (not a ``pollchat run --workers`` master)."""
        keys = [i["key"] for i in self.impls
                if i["family"] == "pollchat" and not i["skip"] and not i.get("workers")
                and i.get("tree", "current") == tree
                and (i["version"].startswith(minor + ".") if minor
                     else "-py" not in i["key"])]
        preferred = [k for k in keys if i_backend(self.impl(k)) == "epoll"]
        chosen = preferred or keys
        return str(chosen[0]) if chosen else None

    def base_of(self, key: str) -> Optional[str]:
        """The baseline implementation paired with current-tree ``key``
        (``pollchat-epoll`` -> ``pollchat-base-epoll``), if it ran."""
        if not key.startswith("pollchat-") or key.startswith("pollchat-base-"):
            return None
        base = "pollchat-base-" + key[len("pollchat-"):]
        impl = self.impl(base)
        return base if impl is not None and not impl["skip"] else None


def i_backend(impl: Optional[Dict[str, Any]]) -> str:
    """The pollchat backend of an implementation description ("" if none)."""
    if impl is None:
        return ""
    return str(impl.get("backend") or impl.get("env", {}).get("POLLCHAT_BACKEND", ""))


def fmt_number(value: Optional[float], unit: str = "") -> str:
    """Human-friendly number: 21,512 / 3.42 / 1.52M."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "%":
        return f"{value:.0f}%"
    if abs(value) >= 10_000_000:
        return f"{value / 1e6:,.1f}M"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: Optional[float]) -> str:
    """``1.23x``, or n/a."""
    return "n/a" if value is None else f"{value:.2f}x"
