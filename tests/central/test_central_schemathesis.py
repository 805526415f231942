"""schemathesis over the coordinator's OpenAPI document: generated requests (valid and invalid)
to every operation, as an admin with an API token, never get a 5xx. Bounded: a few examples per
operation, no deadline (a busy CI machine)."""

from __future__ import annotations

import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from central.app import make_app
from central.config import load
from central.rules.parse import Parsed
from central.service.coordinator import spawn
from central_builders import alarms_state, status
from central_rig import account, central_config, until

_state: dict = {}


def _app():
    if "app" not in _state:
        import tempfile
        from pathlib import Path

        tmp = Path(tempfile.mkdtemp(prefix="siaga-fuzz-"))
        coord = spawn(load(central_config(tmp, 1)), str(tmp / "central.db"), mqtt_client=False)
        coord.call(lambda: coord.ingest(Parsed("sambas", "status", None, status()), coord.clock()))
        coord.call(lambda: coord.ingest(Parsed("sambas", "state", "alarms", alarms_state(ups_on_battery=True)),
                                        coord.clock()))
        until("a snapshot", lambda: coord.snapshot["alarms"])
        _state.update(app=make_app(coord, str(tmp / "central.db")), coord=coord,
                      token=account(str(tmp / "central.db"), "fuzz", "admin"))
    return _state["app"]


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@pytest.fixture(scope="module", autouse=True)
def _stop_coordinator():
    yield
    _state["coord"].stop()


@schema.parametrize()
@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = case.call(headers={"Authorization": f"Bearer {_state['token']}"})
    assert r.status_code < 500, (case.method, case.formatted_path, r.status_code, r.text[:300])
