"""``regiongate simulate --tiers``: service tiers and prompt-cache affinity, measured on one trace.

The scenario's day of traffic gets two more properties per request, drawn from their own random stream
so every engine sees the same ones:

- a **tier**: ``priority`` / ``flex`` / ``default`` by the mix's shares; every deployment keeps
  ``reserve`` of its limit for priority and admits flex only below ``flex_below`` of it (``core.tiers``);
- a **conversation**: a share of the requests are turns of multi-turn conversations, each with a
  ``system_tokens`` long system prompt; turn k's prompt is the system prompt plus every earlier turn's
  prompt and answer plus its own new prompt. A conversation idle longer than the cache TTL is closed
  (its next request starts a new one), so the numbers measure what routing does, not user think time.

The **prefix-cache model**: each deployment runs ``limit / backend_slots`` inference servers (backends),
each with its own prompt cache. A backend that served a conversation within ``ttl_s`` holds it as far
as the turn it served (prompt and answer): for the previous turn, the whole prefix, and it prefills only
the new prompt; for an earlier one, that much less; any other backend prefills everything. Without an
affinity entry the gateway sends a request to the least-busy backend of the region it picked, which for
a conversation is any of them (drawn uniformly); with one, to the backend that served the prefix when
the policy keeps that region (``core.affinity``: its backend goes first). The gateway's affinity table
remembers where each conversation was served, as the real one does.

Three engines run the real ``decide`` in lockstep on the trace: ``affinity`` (the gateway as shipped),
``no-affinity`` (the same without the table) and ``no-flex`` (the same trace with every flex request left
out: the baseline the priority tier must not be worse than).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from regiongate.config import Config
from regiongate.core import Affinity, RouteRequest, Tier
from regiongate.simulate.engine import Dep, Engine
from regiongate.simulate.fleet import Context, build_world
from regiongate.simulate.policies import make_policy
from regiongate.simulate.scenario import Scenario
from regiongate.simulate.stats import HIST_BINS, hist_bin, percentile
from regiongate.simulate.traffic import TrafficModel, arrivals, token_sampler

TIERS = (Tier.PRIORITY, Tier.DEFAULT, Tier.FLEX)
ENGINES = ("affinity", "no-affinity", "no-flex")


@dataclass(frozen=True)
class Mix:
    priority: float = 0.2
    flex: float = 0.3
    reserve: float = 0.1  # share of each limit kept for priority
    flex_below: float = 0.8  # flex admitted only below this utilisation
    sessions: float = 0.5  # share of requests that are turns of conversations
    mean_turns: float = 6.0  # turns per conversation (geometric)
    system_tokens: int = 3000
    max_prompt: int = 32_000
    ttl_s: float = 300.0  # how long a backend keeps a prefix (and the affinity table its entry)
    backend_slots: int = 8  # concurrent sequences of one inference server: a deployment has limit / this


@dataclass(slots=True)
class Turn:
    """One request's tag: its tier index, and (for a conversation) its id, turn number and prefix."""

    tier: int
    conv: int = -1
    turn: int = 0
    prefix: int = 0  # tokens of the conversation before this turn's new prompt
    after: int = 0  # tokens of the conversation once this turn is answered: what its backend then holds


@dataclass
class TierStats:
    hist: list[list[int]] = field(default_factory=lambda: [[0] * HIST_BINS for _ in TIERS])
    requests: list[int] = field(default_factory=lambda: [0] * len(TIERS))
    rejected: list[int] = field(default_factory=lambda: [0] * len(TIERS))
    later_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)  # conversation turns 2+
    hit_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)  # turns 2+ that hit, alone
    miss_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)  # turns 2+ that missed, alone
    later: int = 0
    later_hits: int = 0  # turns 2+ served where their prefix was cached
    saved_tokens: int = 0
    saved_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)  # prefill ms each hit saved
    affinity_used: int = 0  # decisions that had an affinity entry to consider
    codes: list[dict[str, int]] = field(default_factory=lambda: [{} for _ in TIERS])  # refusals by code
    # priority refusals made while a region in the request's scope still had a free slot (its reserve
    # included, which only priority may take), by refusal code: the target says there are none
    priority_with_room: dict[str, int] = field(default_factory=dict)


class Observer:
    """The engine's ``Hook``: the affinity table (when on), the per-deployment prefix caches, the stats."""

    def __init__(self, mix: Mix, affinity: bool, seed: int) -> None:
        self.mix = mix
        self.affinity = affinity
        self.table: dict[int, tuple[str, int, float, int]] = {}  # conv -> region, backend, served at, prefix
        # backend -> conversation -> (served at, tokens of it the backend holds)
        self.caches: dict[tuple[str, str, int], dict[int, tuple[float, int]]] = {}
        self.rng = random.Random(seed)  # which backend a request without affinity lands on
        self.stats = TierStats()
        self.by_model: list[list[Dep]] = []  # the engine's deployments, to check a refusal against
        # turns 2+ placed but not yet answered: did they hit? (tags are shared by the engines: kept here)
        self.hit: dict[int, bool] = {}

    def before(self, t: float, req: RouteRequest, tag: Any) -> RouteRequest:
        turn: Turn = tag
        self.stats.requests[turn.tier] += 1
        tier = TIERS[turn.tier]
        aff = None
        if self.affinity and turn.turn > 1:
            seen = self.table.get(turn.conv)
            if seen is not None and t - seen[2] < self.mix.ttl_s:
                aff = Affinity(seen[0], str(seen[1]), seen[3])
                self.stats.affinity_used += 1
        if tier is Tier.DEFAULT and aff is None:
            return req
        return replace(req, tier=tier, affinity=aff)

    def placed(self, t: float, d: Dep, tag: Any, prompt: int) -> int:
        turn: Turn = tag
        if turn.conv < 0:
            return prompt
        seen = self.table.get(turn.conv) if self.affinity else None
        if seen is not None and seen[0] == d.region and t - seen[2] < self.mix.ttl_s:
            backend = seen[1]  # the policy kept the affinity region: its backend is tried first
        else:
            backend = int(self.rng.random() * max(1, round(d.limit / self.mix.backend_slots)))
        cache = self.caches.setdefault((d.model, d.region, backend), {})
        served = cache.get(turn.conv)
        cache[turn.conv] = (t, turn.after)
        if self.affinity:
            self.table[turn.conv] = (d.region, backend, t, prompt)
        if turn.turn > 1:
            self.stats.later += 1
            hit = self.hit[id(turn)] = served is not None and t - served[0] < self.mix.ttl_s
            if served is not None and hit:
                # A backend that served an earlier turn than the last holds the conversation only as far
                # as that turn: it saves that much, and prefills the rest
                cached = min(served[1], turn.prefix)
                self.stats.later_hits += 1
                self.stats.saved_tokens += cached
                self.stats.saved_hist[hist_bin(cached * d.prefill_s * 1000.0)] += 1
                return prompt - cached
        return prompt

    def first(self, tag: Any, ttft_ms: float) -> None:
        turn: Turn = tag
        i = hist_bin(ttft_ms)
        self.stats.hist[turn.tier][i] += 1
        if turn.turn > 1:
            self.stats.later_hist[i] += 1
            (self.stats.hit_hist if self.hit.pop(id(turn), False) else self.stats.miss_hist)[i] += 1

    def rejected(self, t: float, ctx: Context, tag: Any, code: str) -> None:
        self.stats.rejected[tag.tier] += 1
        codes = self.stats.codes[tag.tier]
        codes[code] = codes.get(code, 0) + 1
        if TIERS[tag.tier] is Tier.PRIORITY and any(
            ctx.allowed[d.ri] and not d.outages and d.in_use < d.limit for d in self.by_model[ctx.model]
        ):
            room = self.stats.priority_with_room
            room[code] = room.get(code, 0) + 1


@dataclass
class SessionsResult:
    mix: Mix
    requests: int
    wall_s: float
    stats: dict[str, TierStats]
    violations: dict[str, int]
    prefill_ms_per_token: float
    seed: int = 0


@dataclass(slots=True)
class _Conv:
    id: int
    turns_left: int
    tokens: int
    last: float


def run_sessions(
    cfg: Config, scenario: Scenario, mix: Mix, requests: int | None = None, seed: int | None = None
) -> SessionsResult:
    """The three engines on one trace with tiers and conversations (see the module docstring)."""
    seed = scenario.run.seed if seed is None else seed
    world = build_world(cfg, scenario, requests)
    traffic = TrafficModel(world.metros, scenario.traffic, world.duration_s, bins=24)
    engines = {name: Engine(world, name, make_policy("gateway")) for name in ENGINES}
    observers = {name: Observer(mix, name != "no-affinity", seed) for name in ENGINES}
    for name, e in engines.items():
        e.hook = observers[name]
        observers[name].by_model = e.by_model
        for d in e.deps:
            d.reserve, d.flex_below = mix.reserve, mix.flex_below
        e.start(1)
    rng = random.Random(seed)
    tags = random.Random(seed ^ 0x5E55)  # tiers and conversations: their own stream, the trace unchanged
    prompt = token_sampler(scenario.traffic.prompt_tokens, rng)
    completion = token_sampler(scenario.traffic.completion_tokens, rng)
    open_convs: dict[int, list[_Conv]] = {}
    ids = 0
    started = time.monotonic()
    n_models, n_kinds = len(world.models), len(world.endpoint_kinds)
    flex_i = TIERS.index(Tier.FLEX)
    done = 0
    for t, metro, mi, ei in arrivals(traffic, world.requests, world.model_shares, world.endpoint_shares, rng):
        c_index = (metro * n_models + mi) * n_kinds + ei
        ctx = world.contexts[c_index]
        p, c = prompt(), completion()
        u = tags.random()
        tier = 0 if u < mix.priority else flex_i if u < mix.priority + mix.flex else 1
        tag = Turn(tier)
        if tags.random() < mix.sessions:
            convs = [
                cv for cv in open_convs.get(c_index, ()) if t - cv.last < mix.ttl_s and cv.turns_left > 0
            ]
            if convs and tags.random() >= 1.0 / mix.mean_turns:
                cv = convs[int(tags.random() * len(convs))]
            else:
                ids += 1
                cv = _Conv(ids, 1 + int(tags.expovariate(1.0 / (mix.mean_turns - 1))), mix.system_tokens, t)
                convs.append(cv)
            open_convs[c_index] = convs[-8:]  # a bounded set of live conversations per place
            tag = Turn(tier, cv.id, 1 if cv.tokens == mix.system_tokens else 2, cv.tokens)
            p = min(cv.tokens + p, mix.max_prompt)
            cv.tokens = tag.after = min(p + c, mix.max_prompt)
            cv.turns_left -= 1
            cv.last = t
        r = ctx.request
        req = RouteRequest(
            r.model, r.endpoint, r.client_location, r.access, p, (done * 0x9E3779B1) & 0xFFFFFFFF
        )
        for name, e in engines.items():
            if name == "no-flex" and tier == flex_i:
                continue
            e.arrive(t, ctx, req, p, c, 0, tag)
        done += 1
    for e in engines.values():
        e.finish()
    spec = world.deployments[0]
    return SessionsResult(
        mix,
        done,
        time.monotonic() - started,
        {n: o.stats for n, o in observers.items()},
        {n: e.stats.violations for n, e in engines.items()},
        spec.prefill_s * 1000.0,
        seed,
    )


def _ms(hist: Sequence[int], q: float) -> str:
    v = percentile(hist, q)
    return "-" if v is None else f"{v:,.0f}"


def tier_table(res: SessionsResult) -> list[str]:
    rows = [
        "| tier | run | requests | p50 ms | p99 ms | rejected | refused as | refused with a slot in scope |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for i, tier in enumerate(TIERS):
        for name in ("affinity", "no-flex"):
            s = res.stats[name]
            if s.requests[i] == 0:
                continue
            label = "20/30 mix" if name == "affinity" else "no flex traffic"
            rej = s.rejected[i] / s.requests[i]
            room = _codes(s.priority_with_room) if s.priority_with_room else "0"
            rows.append(
                f"| {tier} | {label} | {s.requests[i]:,} | {_ms(s.hist[i], 0.5)} | {_ms(s.hist[i], 0.99)} | "
                f"{s.rejected[i]:,} ({rej:.2%}) | {_codes(s.codes[i])} | {room if tier is Tier.PRIORITY else '-'} |"
            )
    return rows


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{c} {n:,}" for c, n in sorted(codes.items(), key=lambda kv: -kv[1])) or "-"


def affinity_table(res: SessionsResult) -> list[str]:
    rows = [
        "| affinity | turns 2+ | prefix-cache hits | prefill saved per hit: mean ms | p50 ms "
        "| turn 2+ TTFT p50 ms | p99 ms | residency violations |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("affinity", "no-affinity"):
        s = res.stats[name]
        hit = s.later_hits / s.later if s.later else 0.0
        saved = s.saved_tokens / s.later_hits * res.prefill_ms_per_token if s.later_hits else 0.0
        rows.append(
            f"| {'on' if name == 'affinity' else 'off'} | {s.later:,} | {hit:.1%} | {saved:,.0f} | "
            f"{_ms(s.saved_hist, 0.5)} | {_ms(s.later_hist, 0.5)} | {_ms(s.later_hist, 0.99)} | "
            f"{res.violations[name]} |"
        )
    return rows


def affinity_target(res: SessionsResult) -> str:
    """The issue's target in one line: turn 2+ TTFT p50 drops by at least the median prefill a hit saves."""
    on, off = res.stats["affinity"], res.stats["no-affinity"]
    p50_on, p50_off, saved = (
        percentile(on.later_hist, 0.5),
        percentile(off.later_hist, 0.5),
        percentile(on.saved_hist, 0.5),
    )
    if p50_on is None or p50_off is None or saved is None:
        return "Turn 2+ TTFT p50 drop: not measured (no conversation turns 2+ or no hits)."
    drop = p50_off - p50_on
    verdict = "met" if drop >= saved else "not met"
    hit_on, miss_off = percentile(on.hit_hist, 0.5), percentile(off.miss_hist, 0.5)
    split = (
        ""
        if hit_on is None or miss_off is None
        else f" A hit with affinity (p50 {hit_on:,.0f} ms) against a miss without ({miss_off:,.0f} ms): "
        f"{miss_off - hit_on:,.0f} ms."
    )
    return (
        f"Turn 2+ TTFT p50 drop with affinity: {drop:,.0f} ms; median prefill a hit saves (affinity on): "
        f"{saved:,.0f} ms: {verdict}.{split}"
    )
