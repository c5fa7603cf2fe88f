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

    def workload(self, key: str) -> Optional[Dict[str, Any]]:
        """The workload description, or None if it was not run."""
        return next((w for w in self.workloads if w["key"] == key), None)

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
        return None if value is None or math.isnan(value) else value

    def primary(self, workload: str) -> Metric:
        """The workload's primary metric."""
        return METRICS[self.workload(workload)["metrics"][0]]

    # -- comparison ----------------------------------------------------------

    def baseline(self, workload: str, point: str) -> Optional[str]:
        """The implementation ratios are taken against at ``point``: the first
        of the workload's baselines that produced a number there."""
        for key in self.workload(workload)["baselines"]:
            if self.value(workload, point, key) is not None:
                return key
        return None

    def ratio(self, workload: str, point: str, impl: str) -> Optional[float]:
        """``impl``'s primary metric over the baseline's, at ``point``."""
        base_key = self.baseline(workload, point)
        if base_key is None:
            return None
        mine = self.value(workload, point, impl)
        base = self.value(workload, point, base_key)
        return mine / base if mine is not None and base else None

    def pollchat_key(self) -> Optional[str]:
        """The pollchat implementation the targets are about: epoll if it ran,
        else the first pollchat backend that did."""
        keys = [i["key"] for i in self.impls if i["family"] == "pollchat" and not i["skip"]]
        if "pollchat-epoll" in keys:
            return "pollchat-epoll"
        return keys[0] if keys else None


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
