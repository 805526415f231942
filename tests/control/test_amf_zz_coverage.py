"""Every row of the transition table (RULES) is taken by at least one test.

amf_harness records every Transition any test sees in ``SEEN_RULES``. This file is named to run
last; when it runs alone (or after a ``-k`` selection) the set is incomplete, so it then runs
the ``scenario_*`` functions of the AMF test modules itself: the result never depends on which
other tests ran.
"""

from __future__ import annotations

import inspect

import amf_harness
import test_amf
from agent.control.amf_types import RULES
from amf_harness import SEEN_RULES


def scenario_functions() -> list:
    return [f for name, f in inspect.getmembers(test_amf, inspect.isfunction)
            if name.startswith("scenario_") and f.__module__ == test_amf.__name__]


def test_there_are_scenarios():
    assert len(scenario_functions()) >= 15


def test_the_scenarios_alone_take_every_rule():
    before = set(SEEN_RULES)
    SEEN_RULES.clear()
    try:
        for f in scenario_functions():
            f()
        missing = sorted({r.key for r in RULES} - SEEN_RULES)
        assert not missing, f"rules no scenario takes: {missing}"
    finally:
        SEEN_RULES.update(before)


def test_every_rule_of_the_table_was_taken_in_this_session():
    if {r.key for r in RULES} - SEEN_RULES:  # run alone or after a selection
        for f in scenario_functions():
            f()
    missing = sorted({r.key for r in RULES} - SEEN_RULES)
    assert not missing, f"rules never taken by any test: {missing}"
    unknown = sorted(SEEN_RULES - {r.key for r in RULES})
    assert not unknown, f"transitions with keys not in RULES: {unknown}"
    assert amf_harness.SEEN_RULES is SEEN_RULES
