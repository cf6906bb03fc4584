"""``regiongate simulate --tiers``: service tiers and prompt-cache affinity, measured on one trace.

The scenario's day of traffic gets two more properties per request, drawn from their own random stream
so every engine sees the same ones:

- a **tier**: ``priority`` / ``flex`` / ``default`` by the mix's shares; every deployment keeps
  ``reserve`` of its limit for priority and admits flex only below ``flex_below`` of it (``core.tiers``);
- a **conversation**: a share of the requests are turns of multi-turn conversations, each with a
  ``system_tokens`` long system prompt; turn k's prompt is the system prompt plus every earlier turn's
  prompt and answer plus its own new prompt. A conversation's next turn comes only once its previous
  turn is answered in every engine that served it (its prompt holds that answer); one idle longer than
  the cache TTL is closed, and one whose next prompt would pass ``max_prompt`` ends (no truncation,
  which would break the prefix), so the numbers measure what routing does, not user think time.

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
out: the baseline the priority tier must not be worse than). Every turn 2+ answered by both
``affinity`` and ``no-affinity`` is compared with itself (``Paired``): its TTFT drop against the prefill
its backend saved with affinity beyond what it saved without, and the rest of the drop taken apart.
"""

from __future__ import annotations

import random
import statistics
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
    n: int = 0  # the arrival's index: pairs one turn across the engines
    completion: int = 0
    waiting: int = 0  # engines yet to answer or refuse it: the next turn waits for them
    ready_at: float = 0.0  # when the last engine that answered it finished its answer
    placed_at: float = 0.0


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
        # turns 2+ placed, not yet answered: the prefill ms their backend's cache saved (0: a miss)
        self.saved: dict[int, float] = {}
        # turns 2+ answered, by arrival index: TTFT, network RTT, queueing, prefill saved (ms)
        self.turns: dict[int, tuple[float, float, float, float]] = {}

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
            self.saved[turn.n] = 0.0
            if served is not None and t - served[0] < self.mix.ttl_s:
                # A backend that served an earlier turn than the last holds the conversation only as far
                # as that turn: it saves that much, and prefills the rest
                cached = min(served[1], turn.prefix)
                self.stats.later_hits += 1
                self.stats.saved_tokens += cached
                saved_ms = self.saved[turn.n] = cached * d.prefill_s * 1000.0
                self.stats.saved_hist[hist_bin(saved_ms)] += 1
                return prompt - cached
        return prompt

    def first(self, t: float, d: Dep, ctx: Context, tag: Any, ttft_ms: float, wait_s: float) -> None:
        turn: Turn = tag
        i = hist_bin(ttft_ms)
        self.stats.hist[turn.tier][i] += 1
        if turn.conv < 0:
            return
        turn.waiting -= 1
        turn.ready_at = max(turn.ready_at, t + turn.completion * d.token_s)
        if turn.turn > 1:
            saved = self.saved.pop(turn.n)
            self.stats.later_hist[i] += 1
            (self.stats.hit_hist if saved > 0.0 else self.stats.miss_hist)[i] += 1
            self.turns[turn.n] = (ttft_ms, ctx.rtt_s[d.ri] * 1000.0, wait_s * 1000.0, saved)

    def rejected(self, t: float, ctx: Context, tag: Any, code: str) -> None:
        if tag.conv >= 0:
            tag.waiting -= 1
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
    paired: list[Paired] = field(default_factory=list)


@dataclass(frozen=True)
class Paired:
    """Turns 2+ answered by both runs, each against itself: off (no affinity) and on.

    Per turn, ``drop`` is its TTFT off less its TTFT on, and ``saved`` the prefill its backend's cache
    saved on less what it saved off (0 when both hit the same prefix, or both missed). ``drop`` is
    exactly ``saved`` + ``rtt`` (network round trip off less on: negative when affinity kept it on a
    farther region) + ``queue`` (queueing off less on) + ``server`` (the rest: the regions' fixed
    first-token time and per-token prefill differ); the columns are medians of each, which do not add
    up, so the means are kept too."""

    group: str
    turns: int
    hits_off: int
    hits_on: int
    p50_off: float
    p50_on: float
    drop: float
    saved: float
    gap: float  # median of drop - saved
    rtt: float
    queue: float
    server: float
    covered: float  # share of turns whose drop is at least their saved prefill (to 0.5 ms)
    farther: float  # share of turns answered from a farther region with affinity (RTT up by over 0.5 ms)
    farther_rtt: float  # their median extra round trip, ms
    means: tuple[float, float, float, float, float]  # drop, saved, rtt, queue, server


def pair_turns(
    off: dict[int, tuple[float, float, float, float]], on: dict[int, tuple[float, float, float, float]]
) -> list[Paired]:
    """The paired comparison (``Paired``): all turns, then by what the cache did off and on."""
    groups: dict[str, list[tuple[tuple[float, float, float, float], tuple[float, float, float, float]]]] = {
        "all": [],
        "off missed, on hit": [],
        "both hit": [],
        "both missed": [],
        "off hit, on missed": [],
    }
    for n, a in off.items():
        b = on.get(n)
        if b is None:
            continue
        groups["all"].append((a, b))
        hit_off, hit_on = a[3] > 0, b[3] > 0
        if hit_off == hit_on:
            groups["both hit" if hit_on else "both missed"].append((a, b))
        else:
            groups["off missed, on hit" if hit_on else "off hit, on missed"].append((a, b))
    out = []
    med = statistics.median
    for group, pairs in groups.items():
        if not pairs:
            continue
        drop = [a[0] - b[0] for a, b in pairs]
        saved = [b[3] - a[3] for a, b in pairs]
        rtt = [a[1] - b[1] for a, b in pairs]
        queue = [a[2] - b[2] for a, b in pairs]
        server = [dr - sv - rt - qu for dr, sv, rt, qu in zip(drop, saved, rtt, queue, strict=True)]
        k = len(pairs)
        extra = [-rt for rt in rtt if rt < -0.5]
        out.append(
            Paired(
                group,
                k,
                sum(a[3] > 0 for a, _ in pairs),
                sum(b[3] > 0 for _, b in pairs),
                med(a[0] for a, _ in pairs),
                med(b[0] for _, b in pairs),
                med(drop),
                med(saved),
                med(dr - sv for dr, sv in zip(drop, saved, strict=True)),
                med(rtt),
                med(queue),
                med(server),
                sum(dr >= sv - 0.5 for dr, sv in zip(drop, saved, strict=True)) / k,
                len(extra) / k,
                med(extra) if extra else 0.0,
                (sum(drop) / k, sum(saved) / k, sum(rtt) / k, sum(queue) / k, sum(server) / k),
            )
        )
    return out


@dataclass(slots=True)
class _Conv:
    id: int
    turns_left: int
    tokens: int
    last: Turn  # its latest turn: the next one waits for its answer


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
            # live: answered and idle less than the TTL, or still in flight (for less than the TTL)
            live = [
                cv
                for cv in open_convs.get(c_index, ())
                if cv.turns_left > 0
                and t - (cv.last.ready_at if cv.last.waiting <= 0 else cv.last.placed_at) < mix.ttl_s
            ]
            ready = [
                cv
                for cv in live
                if cv.last.waiting <= 0 and cv.last.ready_at <= t and cv.tokens + p <= mix.max_prompt
            ]
            if ready and tags.random() >= 1.0 / mix.mean_turns:
                cv = ready[int(tags.random() * len(ready))]
            else:
                ids += 1
                cv = _Conv(ids, 1 + int(tags.expovariate(1.0 / (mix.mean_turns - 1))), mix.system_tokens, tag)
                live.append(cv)
            open_convs[c_index] = live[-8:]  # a bounded set of live conversations per place
            tag = Turn(tier, cv.id, 1 if cv.tokens == mix.system_tokens else 2, cv.tokens, n=done)
            p = cv.tokens + p
            cv.tokens = tag.after = p + c
            tag.completion, tag.placed_at = c, t
            tag.waiting = len(engines) - (tier == flex_i)  # no-flex leaves flex out
            cv.turns_left -= 1
            cv.last = tag
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
        pair_turns(observers["no-affinity"].turns, observers["affinity"].turns),
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


def paired_table(res: SessionsResult) -> list[str]:
    """Each turn 2+ answered in both runs against itself, by what the prefix cache did off and on."""
    rows = [
        "| turns 2+ answered in both runs | turns | hits off | hits on | TTFT p50 off ms | p50 on ms "
        "| paired drop p50 ms | saved prefill p50 ms | drop - saved p50 ms | RTT off - on p50 ms "
        "| queueing off - on p50 ms | drop >= saved |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in res.paired:
        rows.append(
            f"| {g.group} | {g.turns:,} | {g.hits_off / g.turns:.1%} | {g.hits_on / g.turns:.1%} | "
            f"{g.p50_off:,.0f} | {g.p50_on:,.0f} | {g.drop:,.0f} | {g.saved:,.0f} | {g.gap:,.0f} | "
            f"{g.rtt:,.0f} | {g.queue:,.0f} | {g.covered:.1%} |"
        )
    return rows


def affinity_target(res: SessionsResult) -> str:
    """The issue's target, paired: each turn 2+'s TTFT drop against the prefill its hit saved relative to
    the same turn without affinity, medians over every turn 2+ answered in both runs."""
    if not res.paired:
        return "Paired turn 2+ TTFT drop: not measured (no conversation turn 2+ answered in both runs)."
    g = res.paired[0]
    verdict = "met" if g.drop >= g.saved else "not met"
    drop, saved, rtt, queue, server = g.means
    return (
        f"Paired over the {g.turns:,} turns 2+ answered in both runs: median TTFT drop {g.drop:,.0f} ms "
        f"(p50 {g.p50_off:,.0f} -> {g.p50_on:,.0f} ms) against a median saved prefill of {g.saved:,.0f} ms "
        f"(the prefill each turn's backend saved with affinity less what it saved without): {verdict}. "
        f"{g.covered:.1%} of the turns dropped by at least their own saving; {g.farther:.1%} were answered "
        f"from a farther region with affinity (median {g.farther_rtt:,.0f} ms more round trip). Mean drop {drop:,.0f} ms = "
        f"saved prefill {saved:,.0f} + RTT {rtt:+,.0f} + queueing {queue:+,.0f} + server {server:+,.0f} ms."
    )
