"""Routing tables as data (docs/method.md §4 table, §8 baselines, paper Table 8 ablations)."""

from __future__ import annotations

import dataclasses

import pytest

from dopd_vlm.routing import RoutingConfig
from dopd_vlm.tables import TABLES, Regime, RoutingTable, get_table

EXPECTED_NAMES = {
    "dopd", "vanilla_opd", "vanilla_opd_full", "opd_priv_teacher", "opsd", "gkd", "sdft",
    "dopd_no_student", "dopd_no_teacher", "dopd_uniform", "dopd_single_divergence", "dopd_single_support",
}


def test_registry_has_every_method():
    assert set(TABLES) == EXPECTED_NAMES


def test_dopd_table_is_the_method_md_table():
    t = get_table("dopd")
    rows = {r.name: (r.target, r.divergence, r.support, r.resolve_weight(RoutingConfig())) for r in t.regimes}
    assert t.router == "dopd4"
    assert rows == {
        "LH": ("teacher_priv", "reverse_kl", "topk", 0.6),
        "LL": ("student_priv", "reverse_kl", "topk", 0.3),
        "HT": ("teacher_priv", "js", "full", 1.0),
        "HS": ("student_priv", "reverse_kl", "topk", 0.6),
    }


@pytest.mark.parametrize(
    "name,policies",
    [
        ("dopd", {"student_plain", "teacher_priv", "student_priv"}),
        ("dopd_no_teacher", {"student_plain", "teacher_priv", "student_priv"}),
        ("vanilla_opd", {"student_plain", "teacher_plain"}),
        ("opd_priv_teacher", {"student_plain", "teacher_priv"}),
        ("opsd", {"student_plain", "student_priv"}),
        ("gkd", {"student_plain", "teacher_plain"}),
    ],
)
def test_policies_to_score(name, policies):
    assert get_table(name).policies() == policies


def test_baselines_follow_method_md_section_8():
    v = get_table("vanilla_opd").regime("ALL")
    assert (v.target, v.divergence, v.resolve_support(RoutingConfig())) == ("teacher_plain", "reverse_kl", "sampled")
    assert get_table("vanilla_opd_full").regime("ALL").support == "full"
    # routing.opd_support=full makes both sampled-token baselines exact (docs/method.md §8 option)
    full = RoutingConfig(opd_support="full")
    for name in ("vanilla_opd", "opd_priv_teacher"):
        assert get_table(name).regime("ALL").resolve_support(full) == "full"
        assert get_table(name).regime("ALL").resolve_support(RoutingConfig()) == "sampled"
    with pytest.raises(ValueError, match="opd_support"):
        RoutingConfig(opd_support="topk")
    assert get_table("opd_priv_teacher").regime("ALL").target == "teacher_priv"
    o = get_table("opsd").regime("ALL")
    assert (o.target, o.divergence, o.support) == ("student_priv", "jsd", "full")
    g = get_table("gkd").regime("ALL")
    assert (g.target, g.divergence, g.support) == ("teacher_plain", "jsd", "full")


def test_ablations_change_only_what_they_name():
    dopd = {r.name: r for r in get_table("dopd").regimes}
    routing = RoutingConfig()
    for name, zeroed in [("dopd_no_student", {"LL", "HS"}), ("dopd_no_teacher", {"LH", "HT"})]:
        for r in get_table(name).regimes:
            want = 0.0 if r.name in zeroed else dopd[r.name].resolve_weight(routing)
            assert r.resolve_weight(routing) == want, (name, r.name)
            assert (r.target, r.divergence, r.support) == (dopd[r.name].target, dopd[r.name].divergence, dopd[r.name].support)
    assert {r.divergence for r in get_table("dopd_single_divergence").regimes} == {"reverse_kl"}
    assert {r.support for r in get_table("dopd_single_support").regimes} == {"full"}
    assert get_table("dopd_uniform").router == "all"


def test_weights_follow_routing_overrides():
    routing = RoutingConfig(beta_w=0.1, beta_l=0.9)
    t = get_table("dopd")
    assert t.regime("LL").resolve_weight(routing) == 0.1
    assert t.regime("LH").resolve_weight(routing) == 0.9
    assert t.regime("HT").resolve_weight(routing) == 1.0


def test_every_regime_names_its_source():
    for table in TABLES.values():
        for r in table.regimes:
            assert r.source.startswith(("[P]", "[D]")), (table.name, r.name)


def test_unknown_table_suggests_closest_name():
    with pytest.raises(ValueError, match="did you mean 'dopd_uniform'"):
        get_table("dopd_unifrom")
    assert get_table(TABLES["gkd"]) is TABLES["gkd"]


def test_tables_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_table("dopd").router = "all"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target": "teacher"}, "target"),
        ({"divergence": "kl"}, "divergence"),
        ({"support": "top"}, "support"),
        ({"divergence": "js", "support": "sampled"}, "sampled"),
        ({"weight": "beta_x"}, "weight"),
        ({"weight": -1.0}, "weight"),
        ({"source": "paper"}, "source"),
    ],
)
def test_regime_validation(kwargs, match):
    base = dict(name="ALL", target="teacher_priv", divergence="reverse_kl", support="topk", weight=1.0, source="[D] x")
    with pytest.raises(ValueError, match=match):
        Regime(**{**base, **kwargs})


def test_table_regimes_must_match_router():
    r = Regime("ALL", "teacher_priv", "reverse_kl", "topk", 1.0, "[D] x")
    with pytest.raises(ValueError, match="produces regimes"):
        RoutingTable("bad", "dopd4", (r,))
    with pytest.raises(ValueError, match="router"):
        RoutingTable("bad", "three", (r,))
    with pytest.raises(KeyError, match="no regime"):
        get_table("dopd").regime("ALL")
