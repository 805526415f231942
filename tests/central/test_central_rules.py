"""The pure rules in simulated time: fleet online/offline and time to dark, alarms, serviceability
per office and per service, advisories by distance, incidents (regional, national, dark)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from central.rules import advisories, alarms, fleet, incidents, serviceability
from central.rules.geo import NearestOrder, distance_km
from central.rules.settings import Office
from central_builders import OFFICES, RULES, alarms_state, mains, services, status, ups

T0 = 1_800_000_000.0


def office(site="sambas", t=T0, online=True, on_mains=True, runtime=3000.0, svc=None):
    s = fleet.OfficeState(site)
    s, _ = fleet.apply(s, "status", None, status(online), t)
    s, _ = fleet.apply(s, "state", "mains", mains(on_mains), t)
    s, _ = fleet.apply(s, "state", "ups", ups(not on_mains, runtime), t)
    s, _ = fleet.apply(s, "state", "services", svc or services(), t)
    return s


# ------------------------------------------------------------------ fleet ---------------------
def test_heartbeat_timeout_takes_an_office_offline_and_keeps_its_last_state():
    s = office()
    assert fleet.is_online(s, T0 + 180, RULES)
    assert not fleet.is_online(s, T0 + 181, RULES)
    v = fleet.view(s, T0 + 600, RULES)
    assert v["status"] == "offline" and v["stale"] and v["age_s"] == 600
    assert v["offline_reason"] == "heartbeat_timeout" and v["load_on"] == "mains"  # last known, not blank


def test_the_will_takes_it_offline_at_once_but_a_will_of_an_earlier_boot_is_ignored():
    s = office()
    s, _ = fleet.apply(s, "status", None, status(True, boot=2), T0 + 1)
    s2, note = fleet.apply(s, "status", None, status(False, boot=1, reason="lwt"), T0 + 2)
    assert note and fleet.is_online(s2, T0 + 3, RULES)
    s3, note = fleet.apply(s, "status", None, status(False, boot=2, reason="lwt"), T0 + 2)
    assert note is None and not fleet.is_online(s3, T0 + 3, RULES)
    assert fleet.view(s3, T0 + 3, RULES)["offline_reason"] == "lwt"


def test_time_to_dark_counts_down_from_the_last_report_while_offline():
    s = office(on_mains=False, runtime=1800)  # FSD at 600 s of runtime: 1200 s to dark
    s, _ = fleet.apply(s, "status", None, status(False, reason="lwt"), T0 + 60)
    assert fleet.is_dark(s, T0 + 60, RULES)
    assert fleet.time_to_dark(s, T0 + 60, RULES) == pytest.approx(1140)
    assert fleet.time_to_dark(s, T0 + 1200, RULES) == 0
    on_mains = office()
    assert fleet.time_to_dark(on_mains, T0, RULES) is None and not fleet.is_dark(on_mains, T0, RULES)


def test_state_survives_a_round_trip_through_the_store_record():
    s = office(on_mains=False)
    assert fleet.from_record(fleet.to_record(s)) == s


# ------------------------------------------------------------------ alarms --------------------
def test_one_alarm_per_office_and_kind_retrigger_updates_it_ack_with_note():
    a, ch = alarms.merge("sambas", {}, alarms_state(ups_on_battery=True), T0)
    assert [c.what for c in ch] == ["raised"] and a["ups_on_battery"].status == "ACTIVE_UNACK"
    assert a["ups_on_battery"].severity == "MAJOR"
    a, ch = alarms.merge("sambas", a, alarms_state(), T0 + 10)  # gone from the list: cleared
    assert [c.what for c in ch] == ["cleared"] and not a["ups_on_battery"].active
    a, ch = alarms.merge("sambas", a, alarms_state(ups_on_battery=True), T0 + 20)
    assert [c.what for c in ch] == ["retriggered"] and a["ups_on_battery"].count == 2 and len(a) == 1
    acked = alarms.acknowledge(a["ups_on_battery"], "budi", "genset crew called", T0 + 30)
    assert acked.status == "ACTIVE_ACK" and (acked.acked_by, acked.note) == ("budi", "genset crew called")
    assert alarms.severity("service_unreachable:national_app") == "MAJOR"
    assert alarms.is_safety("fail_to_start") and not alarms.is_safety("ups_on_battery")


# ------------------------------------------------------------------ serviceability ------------
def test_per_service_status_keeps_interviews_when_the_national_service_is_gone():
    s = office(svc=services(national_ok=False))
    table = serviceability.office_services(OFFICES["sambas"], s, T0 + 1, RULES)
    assert table["interview_biometrics"]["status"] == "serving"
    assert table["passport_issuance"]["status"] == "not_serving"
    assert "national service unreachable" in table["passport_issuance"]["reason"]


def test_on_battery_is_limited_with_time_to_shutdown_fsd_is_not_serving_offline_is_unknown():
    s = office(on_mains=False, runtime=1800)
    t = serviceability.office_services(OFFICES["sambas"], s, T0, RULES)
    assert t["interview_biometrics"] == {"status": "limited", "reason": "on UPS battery, about 20 min to shutdown"}
    f = office(svc=services(fsd=True))
    assert serviceability.office_services(OFFICES["sambas"], f, T0, RULES)["interview_biometrics"]["status"] == "not_serving"
    gone = office()
    t = serviceability.office_services(OFFICES["sambas"], gone, T0 + 1000, RULES)
    assert t["interview_biometrics"]["status"] == "unknown"
    assert t["interview_biometrics"]["reason"].startswith("unknown: check before travelling")


# ------------------------------------------------------------------ advisories ----------------
def test_distances_are_great_circle_km():
    assert distance_km(1.3625, 109.3, 0.9061, 108.9872) == pytest.approx(61.5, abs=1.0)  # Sambas-Singkawang
    assert distance_km(0, 0, 0, 1) == pytest.approx(111.19, abs=0.01)


_coords = st.one_of(st.none(), st.tuples(st.floats(-11, 6), st.floats(95, 141)))


@settings(max_examples=300, deadline=None)
@given(coords=st.lists(_coords, min_size=1, max_size=40), data=st.data())
def test_the_nearest_order_picks_what_measuring_every_distance_picks(coords, data):
    """NearestOrder (kept orders, a short list, a scan when the short list has too few) against the
    plain rule: serving offices by great-circle distance, those without coordinates last, by id."""
    offices = {f"o{i:02d}": Office(f"o{i:02d}", "x", "r", *(c or (None, None)), ()) for i, c in enumerate(coords)}
    sites = sorted(offices)
    order = NearestOrder()
    order.KEEP = data.draw(st.integers(1, 6))  # small: the scan is taken too
    order.refresh(offices)
    if data.draw(st.booleans()):
        order.prepare()
    for _ in range(3):  # the kept orders serve several rounds with different serving sets
        site = data.draw(st.sampled_from(sites))
        serving = frozenset(data.draw(st.lists(st.sampled_from(sites), max_size=len(sites))))
        k = data.draw(st.integers(1, 5))
        here = offices[site]

        def dist(s):
            o = offices[s]
            if None in (here.latitude, o.latitude):
                return None
            return distance_km(here.latitude, here.longitude, o.latitude, o.longitude)

        want = sorted((s for s in serving if s != site), key=lambda s: (dist(s) is None, dist(s) or 0.0, s))[:k]
        got = order.nearest(site, serving, k)
        assert len(got) == len(want) and site not in got and set(got) <= serving
        # the same distances in the same order (ids may swap only between equally distant offices)
        assert [dist(s) for s in got] == pytest.approx([dist(s) for s in want], abs=1e-6)


def test_the_advisory_names_the_nearest_serving_office_and_never_a_stale_one():
    states = {s: office(s) for s in OFFICES}
    states["sambas"] = office("sambas", on_mains=False, runtime=600)  # at the margin: FSD due
    states["sambas"] = fleet.apply(states["sambas"], "state", "services", services(fsd=True), T0)[0]
    table = advisories.service_table(OFFICES, states, T0 + 1, RULES)
    adv = advisories.advisory("sambas", OFFICES, table, states["sambas"], T0 + 1, RULES)
    alt = adv["services"]["passport_issuance"]["alternatives"]
    assert [a["site"] for a in alt] == ["singkawang", "pontianak", "balikpapan"]
    assert alt[0]["distance_km"] == pytest.approx(61.5, abs=1.0)
    assert adv["valid_until"] == T0 + 1 + RULES.advisory_ttl_s
    # Singkawang's data goes stale (> TTL): never offered, it becomes unknown itself
    states["singkawang"] = office("singkawang", t=T0 - 2000)
    table = advisories.service_table(OFFICES, states, T0 + 1, RULES)
    adv = advisories.advisory("sambas", OFFICES, table, states["sambas"], T0 + 1, RULES)
    assert [a["site"] for a in adv["services"]["passport_issuance"]["alternatives"]][0] == "pontianak"
    assert table["singkawang"]["passport_issuance"]["reason"].startswith("unknown: check before travelling")
    assert advisories.is_stale(adv, adv["valid_until"] + 1)


def test_a_national_notice_says_which_services_no_office_can_give():
    states = {s: office(s, svc=services(national_ok=False)) for s in OFFICES}
    table = advisories.service_table(OFFICES, states, T0, RULES)
    n = advisories.national_notice(OFFICES, table, RULES)
    assert [x["service"] for x in n["unavailable_everywhere"]] == ["passport_issuance"]
    assert [x["service"] for x in n["still_available"]] == ["interview_biometrics"]


# ------------------------------------------------------------------ incidents -----------------
def facts(site, t_out=None, online=True, dark=False, national_since=None, powered=True, **kw):
    return incidents.Facts(site=site, region=OFFICES[site].region, online=online, powered=powered,
                           mains_out_since=t_out, dark=dark, national_down_since=national_since, **kw)


SIZES = {"Kalimantan Barat": 3, "Kalimantan Timur": 2}


def run(incs, fs, t):
    return incidents.step(incs, {f.site: f for f in fs}, SIZES, t, RULES)


def test_two_offices_of_a_region_losing_mains_within_the_window_open_one_probable_regional_incident():
    incs, notes = run({}, [facts("sambas", T0)], T0 + 1)
    assert not incs
    incs, notes = run(incs, [facts("sambas", T0), facts("singkawang", T0 + 100)], T0 + 101)
    (inc,) = incs.values()
    assert (inc.kind, inc.key, inc.status) == ("regional_grid_outage", "Kalimantan Barat", "probable")
    assert set(inc.members) == {"sambas", "singkawang"} and [n.kind for n in notes] == ["incident_opened"]
    again, notes = run(incs, [facts("sambas", T0), facts("singkawang", T0 + 100)], T0 + 102)
    assert again == incs and not notes  # nothing new: no second incident, no page
    confirmed = incidents.confirm(inc, "ops", T0 + 200)
    assert confirmed.status == "confirmed"
    with pytest.raises(ValueError):
        incidents.confirm(confirmed, "ops", T0 + 201)


def test_losses_further_apart_than_the_window_are_not_a_regional_outage():
    incs, _ = run({}, [facts("sambas", T0), facts("singkawang", T0 + 301)], T0 + 302)
    assert not incs


def test_a_regional_incident_closes_after_every_member_cleared_plus_hold_down():
    incs, _ = run({}, [facts("sambas", T0), facts("singkawang", T0)], T0 + 1)
    incs, _ = run(incs, [facts("sambas", None), facts("singkawang", T0)], T0 + 50)
    incs, _ = run(incs, [facts("sambas", None), facts("singkawang", None)], T0 + 60)
    (inc,) = incs.values()
    assert inc.is_open and inc.cleared_since == T0 + 60
    incs, _ = run(incs, [facts("sambas", None), facts("singkawang", T0 + 200)], T0 + 200)  # fails again in hold-down
    incs, _ = run(incs, [facts("sambas", None), facts("singkawang", None)], T0 + 400)
    incs, notes = run(incs, [facts("sambas", None), facts("singkawang", None)], T0 + 699)
    assert next(iter(incs.values())).is_open
    incs, notes = run(incs, [facts("sambas", None), facts("singkawang", None)], T0 + 700)
    assert not next(iter(incs.values())).is_open and [n.kind for n in notes] == ["incident_closed"]


def test_national_outage_needs_offices_in_two_regions_and_groups_their_alarms():
    one_region = [facts("sambas", national_since=T0), facts("singkawang", national_since=T0)]
    incs, _ = run({}, one_region, T0 + 1)
    assert not incs
    two = one_region + [facts("samarinda", national_since=T0 + 10)]
    incs, _ = run({}, two, T0 + 11)
    (inc,) = incs.values()
    assert inc.kind == "national_service_outage" and set(inc.members) == {"sambas", "singkawang", "samarinda"}
    unpowered = [replace(f, powered=False) for f in two]
    assert not run({}, unpowered, T0 + 11)[0]  # offices without power say nothing about the service
    # the members' service_unreachable alarms are grouped: no per-office pages; a safety alarm still pages
    al = [alarms.Alarm(s, "service_unreachable", "MAJOR", True, False, "", T0, T0) for s in ("sambas", "samarinda")]
    al.append(alarms.Alarm("sambas", "fail_to_start", "CRITICAL", True, False, "", T0 + 11, T0 + 11))
    pages, decided = incidents.route_alarms(al, incs, set(), T0 + 100, RULES)
    assert [(p.site, p.text.split()[1]) for p in pages] == [("sambas", "fail_to_start")]
    assert len(decided) == 3


def test_an_alarm_pages_only_after_group_wait_and_only_once():
    a = alarms.Alarm("balikpapan", "ups_on_battery", "MAJOR", True, False, "", T0, T0)
    assert incidents.route_alarms([a], {}, set(), T0 + 29, RULES) == ([], [])
    pages, decided = incidents.route_alarms([a], {}, set(), T0 + 30, RULES)
    assert len(pages) == 1
    assert incidents.route_alarms([a], {}, set(decided), T0 + 31, RULES) == ([], [])


def test_office_dark_opens_and_closes_per_office():
    incs, notes = run({}, [facts("balikpapan", T0, online=False, dark=True)], T0 + 5)
    (inc,) = incs.values()
    assert (inc.kind, inc.key) == ("office_dark", "balikpapan")
    incs, _ = run(incs, [facts("balikpapan", None)], T0 + 10)
    incs, notes = run(incs, [facts("balikpapan", None)], T0 + 310)
    assert not next(iter(incs.values())).is_open


def test_after_action_summary_per_office():
    ev = [{"site": "sambas", "boot": 1, "seq": i, "ts": T0 + t, "kind": k, "name": n} for i, (t, k, n) in enumerate([
        (0, "state", "MAINS_FAILING"), (40, "alarm", "fail_to_start"), (900, "fsd", "fsd_on"), (4500, "state", "MAINS_OK")])]
    r = incidents.after_action(ev)["sambas"]
    assert r["mains_lost_at"] == T0 and r["generator_failed_at"] == T0 + 40 and r["fsd_at"] == T0 + 900
    assert r["minutes_without_service"] == 60.0
