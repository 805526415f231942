"""Great-circle distance (haversine on a sphere of the mean Earth radius)."""

from __future__ import annotations

import heapq
import math

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    """The point on the unit sphere: the straight-line (chord) distance between two of these
    grows with the great-circle distance, so it orders offices by distance with one C call
    (``math.dist``) instead of a haversine each."""
    p, l = math.radians(lat), math.radians(lon)
    return (math.cos(p) * math.cos(l), math.cos(p) * math.sin(l), math.sin(p))


class NearestOrder:
    """For each office, the :data:`KEEP` other offices nearest to it, nearest first, worked out once
    per office and kept while no office's coordinates change.

    Listing the nearest offices that serve a service, for every office out of service, was the
    costliest part of the coordinator's tick at thousands of offices: a distance to every serving
    office, again whenever the set of serving offices changed (every tick while a fleet comes
    online). With the order kept, a pick reads the first few entries. A pick that finds fewer than
    it needs among the KEEP nearest means few offices serve at all, and it measures to each of them.
    """

    KEEP = 256

    def __init__(self) -> None:
        self._coords: tuple = ()
        self._vec: dict[str, tuple[float, float, float]] = {}
        self._sites: list[str] = []  # those with coordinates, by id (a stable sort keeps ties by id)
        self._order: dict[str, list[str]] = {}

    def refresh(self, offices: dict) -> None:
        """Call with the offices before picking (once per round): the orders are dropped when
        any office's coordinates changed."""
        coords = tuple((s, o.latitude, o.longitude) for s, o in offices.items())
        if coords != self._coords:  # a new registry or an office that announced new coordinates
            self._coords, self._order = coords, {}
            self._vec = {s: unit_vector(lat, lon) for s, lat, lon in coords if lat is not None and lon is not None}
            self._sites = sorted(self._vec)

    def prepare(self) -> None:
        """Work out every office's order now (at start, before messages flow: about a second for
        2,000 offices) rather than in the first rounds, while a whole fleet reports in at once."""
        for site, here in self._vec.items():
            if site not in self._order:
                self._nearest_first(site, here)

    def _nearest_first(self, site: str, here: tuple[float, float, float]) -> list[str]:
        vec = self._vec
        order = sorted(self._sites, key=lambda s: math.dist(here, vec[s]))
        order.remove(site)
        del order[self.KEEP:]
        self._order[site] = order
        return order

    def nearest(self, site: str, serving: frozenset[str], k: int) -> list[str]:
        """Up to ``k`` offices of ``serving`` other than ``site``, nearest first (ties by site id);
        offices without coordinates come after those with, by site id (as of :meth:`refresh`)."""
        vec = self._vec
        here = vec.get(site)
        if here is None:  # no coordinates here: no distances, the site ids decide
            return sorted(s for s in serving if s != site)[:k]
        order = self._order.get(site) or self._nearest_first(site, here)
        picked = []
        for s in order:
            if s in serving:
                picked.append(s)
                if len(picked) == k:
                    return picked
        if len(order) == len(vec) - 1:  # the order holds every office with coordinates: add the rest
            return picked + sorted(s for s in serving if s not in vec and s != site)[: k - len(picked)]
        # Fewer than k serving among the KEEP nearest: few serve at all, measuring to each is cheap.
        return heapq.nsmallest(k, (s for s in serving if s != site),
                               key=lambda s: (s not in vec, math.dist(here, vec[s]) if s in vec else 0.0, s))
