"""Methods as data: routing tables (docs/method.md §4, §8; docs/method.md §8 "each is a routing table").

A table is a router name plus regimes ``(name, target, divergence, support, weight, source)``. The
trainer asks ``table.policies()`` which policies to score and hands the logits to
``dopd_vlm.loss.routed_loss``; there is no per-method branch anywhere else.

``weight`` is a number or the name of a ``RoutingConfig`` field (``"beta_l"``, ``"beta_w"``), so
``routing.beta_l=0.5`` on the command line changes every table that uses β_l; likewise ``support``
may name ``opd_support``, so ``routing.opd_support=full`` makes the sampled-token OPD baselines exact.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from dopd_vlm.divergences import DIVERGENCES, SUPPORTS
from dopd_vlm.routing import ROUTER_REGIMES, ROUTERS, RoutingConfig

STUDENT = "student_plain"  # the only trained policy (docs/method.md §1)
TARGET_POLICIES = ("teacher_priv", "student_priv", "teacher_plain")
WEIGHT_FIELDS = ("beta_w", "beta_l")
SUPPORT_FIELDS = ("opd_support",)  # a support read from RoutingConfig (routing.opd_support=full)
# Routing statistics q_T, q_S are scored under the privileged context (docs/method.md §2).
ROUTER_POLICIES = {"all": frozenset(), "dopd4": frozenset({"teacher_priv", "student_priv"})}


@dataclass(frozen=True)
class Regime:
    """One row of a routing table (docs/method.md §4 table): tokens routed here get
    ``weight · D(student_plain ‖ target)`` with divergence ``D`` on ``support``."""

    name: str
    target: str  # teacher_priv | student_priv | teacher_plain (docs/method.md §1)
    divergence: str  # reverse_kl | forward_kl | js | jsd (dopd_vlm.divergences)
    support: str  # full | topk | sampled, or a RoutingConfig field name (opd_support)
    weight: float | str  # number, or a RoutingConfig field name (beta_w / beta_l)
    source: str  # where this row comes from: "[P] ..." paper, "[D] ..." project decision

    def __post_init__(self) -> None:
        where = f"regime {self.name!r}"
        if self.target not in TARGET_POLICIES:
            raise ValueError(f"{where}: target {self.target!r} is not one of {TARGET_POLICIES}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"{where}: divergence {self.divergence!r} is not one of {DIVERGENCES}")
        if self.support not in SUPPORTS + SUPPORT_FIELDS:
            raise ValueError(f"{where}: support {self.support!r} is not one of {SUPPORTS} or {SUPPORT_FIELDS}")
        if self.support in ("sampled", *SUPPORT_FIELDS) and self.divergence != "reverse_kl":
            raise ValueError(f"{where}: support {self.support!r} can be 'sampled', which exists only for reverse_kl "
                             "(docs/method.md §8)")
        if isinstance(self.weight, str):
            if self.weight not in WEIGHT_FIELDS:
                raise ValueError(f"{where}: weight {self.weight!r} names no routing field {WEIGHT_FIELDS}")
        elif isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise ValueError(f"{where}: weight must be a number ≥ 0 or one of {WEIGHT_FIELDS}, got {self.weight!r}")
        if not self.source.startswith(("[P]", "[D]")):
            raise ValueError(f"{where}: source must start with [P] or [D], got {self.source!r}")

    def resolve_support(self, routing: RoutingConfig) -> str:
        """The support, reading ``opd_support`` from the routing config (docs/method.md §8: vanilla OPD
        is sampled-token by default, with the full vocabulary as an option)."""
        return str(getattr(routing, self.support)) if self.support in SUPPORT_FIELDS else self.support

    def resolve_weight(self, routing: RoutingConfig) -> float:
        """The numeric weight, reading ``beta_w`` / ``beta_l`` from the routing config (docs/method.md §4)."""
        if isinstance(self.weight, str):
            return float(getattr(routing, self.weight))
        return float(self.weight)


@dataclass(frozen=True)
class RoutingTable:
    """A method: router + regimes whose names are exactly the router's regime names (docs/method.md §8)."""

    name: str
    router: str  # all | dopd4 (dopd_vlm.routing.route)
    regimes: tuple[Regime, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"table {self.name!r}: router {self.router!r} is not one of {ROUTERS}")
        names = tuple(r.name for r in self.regimes)
        expected = ROUTER_REGIMES[self.router]
        if sorted(names) != sorted(expected):
            raise ValueError(
                f"table {self.name!r}: router {self.router!r} produces regimes {expected}, table has {names}"
            )

    def policies(self) -> frozenset[str]:
        """Every policy that must be scored for this table: student_plain, the regime targets and
        the router's statistics policies (dopd4 needs teacher_priv and student_priv, docs/method.md §2)."""
        return frozenset({STUDENT, *(r.target for r in self.regimes), *ROUTER_POLICIES[self.router]})

    def regime(self, name: str) -> Regime:
        for regime in self.regimes:
            if regime.name == name:
                return regime
        raise KeyError(f"table {self.name!r} has no regime {name!r}; regimes: {[r.name for r in self.regimes]}")


def _dopd_regimes(
    *,
    lh: tuple[str, str, float | str] = ("reverse_kl", "topk", "beta_l"),
    ll: tuple[str, str, float | str] = ("reverse_kl", "topk", "beta_w"),
    ht: tuple[str, str, float | str] = ("js", "full", 1.0),
    hs: tuple[str, str, float | str] = ("reverse_kl", "topk", "beta_l"),
    source: str = "[P] DOPD docs/method.md §4 table",
) -> tuple[Regime, ...]:
    """The four DOPD regimes of docs/method.md §4; ablations override one row's (divergence, support, weight)."""
    return (
        Regime("LH", "teacher_priv", *lh, source=source),
        Regime("LL", "student_priv", *ll, source=source),
        Regime("HT", "teacher_priv", *ht, source=source),
        Regime("HS", "student_priv", *hs, source=source),
    )


def _all(name: str, target: str, divergence: str, support: str, source: str, description: str) -> RoutingTable:
    """A one-regime table over every valid token (the docs/method.md §8 baselines, router ``all``)."""
    return RoutingTable(name, "all", (Regime("ALL", target, divergence, support, 1.0, source),), description)


_TABLE_LIST = (
    RoutingTable("dopd", "dopd4", _dopd_regimes(), "DOPD: four regimes LH / LL / HT / HS (docs/method.md §4)"),
    _all(
        "vanilla_opd", "teacher_plain", "reverse_kl", "opd_support",
        "[P] docs/method.md §8: sampled-token reverse KL, score-function gradient (Thinking Machines OPD); "
        "routing.opd_support=full for the exact full-vocabulary option",
        "vanilla on-policy distillation from the plain teacher",
    ),
    _all(
        "vanilla_opd_full", "teacher_plain", "reverse_kl", "full",
        "[P] docs/method.md §8: vanilla OPD with the full-vocabulary reverse KL option",
        "vanilla OPD, exact full-vocabulary reverse KL",
    ),
    _all(
        "opd_priv_teacher", "teacher_priv", "reverse_kl", "opd_support",
        "[P] docs/method.md §8 'privilege illusion' setting; [D] support as vanilla_opd (routing.opd_support)",
        "vanilla OPD from the privileged teacher",
    ),
    _all(
        "opsd", "student_priv", "jsd", "full",
        "[P] docs/method.md §8: on-policy self-distillation, JSD(β = 0.5), full vocabulary",
        "on-policy self-distillation from the privileged student",
    ),
    _all(
        "gkd", "teacher_plain", "jsd", "full",
        "[P] docs/method.md §8: GKD, generalised JSD(β), full vocabulary; [D] β = routing.jsd_beta",
        "generalised knowledge distillation, on-policy",
    ),
    _all(
        "sdft", "student_priv", "reverse_kl", "full",
        "[D] self-distillation fine-tuning: all tokens, privileged student, full reverse KL "
        "(docs/method.md names the baseline but not its objective)",
        "self-distillation from the privileged student with reverse KL",
    ),
    RoutingTable(
        "dopd_no_student", "dopd4",
        _dopd_regimes(ll=("reverse_kl", "topk", 0.0), hs=("reverse_kl", "topk", 0.0),
                      source="[P] Table 8 ablation: self regimes LL / HS weight 0"),
        "DOPD without the self-distillation regimes (tokens still routed, weight 0)",
    ),
    RoutingTable(
        "dopd_no_teacher", "dopd4",
        _dopd_regimes(lh=("reverse_kl", "topk", 0.0), ht=("js", "full", 0.0),
                      source="[P] Table 8 ablation: teacher regimes LH / HT weight 0"),
        "DOPD without the teacher regimes (tokens still routed, weight 0)",
    ),
    _all(
        "dopd_uniform", "teacher_priv", "reverse_kl", "topk",
        "[P] Table 8 ablation 'routing off'; [D] every token gets the LH objective "
        "(privileged teacher, top-K reverse KL, weight 1)",
        "DOPD with routing off: one objective on every token",
    ),
    RoutingTable(
        "dopd_single_divergence", "dopd4",
        _dopd_regimes(ht=("reverse_kl", "full", 1.0),
                      source="[P] Table 8 ablation; [D] HT also uses reverse KL (supports unchanged)"),
        "DOPD with reverse KL in every regime",
    ),
    RoutingTable(
        "dopd_single_support", "dopd4",
        _dopd_regimes(lh=("reverse_kl", "full", "beta_l"), ll=("reverse_kl", "full", "beta_w"),
                      hs=("reverse_kl", "full", "beta_l"),
                      source="[P] Table 8 ablation; [D] every regime uses the full vocabulary"),
        "DOPD with the full-vocabulary support in every regime",
    ),
)

TABLES: dict[str, RoutingTable] = {t.name: t for t in _TABLE_LIST}


def get_table(name: str | RoutingTable) -> RoutingTable:
    """The registered table ``name`` (a ``RoutingTable`` passes through); unknown names error with
    the closest valid name."""
    if isinstance(name, RoutingTable):
        return name
    if name in TABLES:
        return TABLES[name]
    close = difflib.get_close_matches(name, TABLES, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown routing table {name!r}{hint} Valid tables: {sorted(TABLES)}")
