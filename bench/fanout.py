"""Scenarios ``fanout``, ``meeting`` and ``audio-rooms``: layouts for :mod:`bench.scenario`.

* fanout — one publisher (VP8 ~900 kbps 640x360@30 + Opus) → N subscribers in one room;
* meeting — N participants in one room, each publishing VP8 + Opus and receiving the
  N - 1 others (N x (N - 1) streams);
* audio-rooms — R rooms of P participants, Opus only, each receiving the P - 1 others.

Each size runs on a fresh target; with several targets the sizes are interleaved
(target A at N=1, target B at N=1, A at N=20, ...) so slow drifts of the machine hit
both alike. The marginal cost is the least-squares slope of the target's CPU share
against forwarded packets per second over the sizes of one target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.scenario import Clips, Layout, MemberSpec, RunFigures, RunOptions, progress, run_layout
from bench.stats import linear_fit
from bench.target import Target

__all__ = [
    "Marginal",
    "ScenarioResult",
    "TargetFactory",
    "audio_rooms_layout",
    "fanout_layout",
    "marginal_cost",
    "meeting_layout",
    "run_sizes",
]

TargetFactory = Callable[[], Target]


def fanout_layout(subscribers: int) -> Layout:
    publisher = MemberSpec("publisher", video=True, audio=True, subscribe=False)
    subs = tuple(MemberSpec(f"sub-{i}", subscribe=True) for i in range(subscribers))
    return Layout(f"1→{subscribers}", subscribers, ((publisher, *subs),))


def meeting_layout(participants: int) -> Layout:
    members = tuple(
        MemberSpec(f"p-{i}", video=True, audio=True, subscribe=True) for i in range(participants)
    )
    return Layout(f"{participants}x{participants}", participants, (members,))


def audio_rooms_layout(rooms: int, participants: int) -> Layout:
    return Layout(
        f"{rooms} rooms x {participants}",
        rooms * participants,
        tuple(
            tuple(MemberSpec(f"r{r}-p{i}", audio=True, subscribe=True) for i in range(participants))
            for r in range(rooms)
        ),
    )


@dataclass(frozen=True, slots=True)
class Marginal:
    """Least-squares fit of a target's CPU share against load over its runs."""

    us_per_forwarded_packet: float
    fixed_cpu_share: float
    """Intercept: CPU share at zero forwarded packets (ingest, timers, idle)."""
    cpu_ms_per_s_per_stream: float


def marginal_cost(runs: Sequence[RunFigures]) -> Marginal | None:
    """None unless at least two runs of different sizes with a window."""
    usable = [r for r in runs if r.window_s > 0]
    if len({r.size for r in usable}) < 2 or len({r.forwarded_pps for r in usable}) < 2:
        return None
    slope, intercept = linear_fit(
        [r.forwarded_pps for r in usable], [r.server_cpu_share for r in usable]
    )
    try:
        per_stream, _ = linear_fit(
            [float(r.streams) for r in usable], [r.server_cpu_share for r in usable]
        )
    except ValueError:
        per_stream = 0.0
    return Marginal(slope * 1e6, intercept, per_stream * 1e3)


@dataclass(slots=True)
class ScenarioResult:
    scenario: str
    options: RunOptions
    clips: Clips
    runs: list[RunFigures] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    """target name → why it could not run."""
    failures: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)

    def targets(self) -> list[str]:
        return list(dict.fromkeys(r.target for r in self.runs))

    def runs_of(self, target: str) -> list[RunFigures]:
        return [r for r in self.runs if r.target == target]

    def marginal(self, target: str) -> Marginal | None:
        return marginal_cost(self.runs_of(target))


async def run_sizes(
    scenario: str,
    layouts: Sequence[Layout],
    targets: Sequence[tuple[str, TargetFactory]],
    clips: Clips,
    options: RunOptions,
    unavailable: dict[str, str],
) -> ScenarioResult:
    """Every layout on every available target (interleaved), each on a fresh target.

    A failed run is reported (and the others go on); a target that cannot run here is
    listed in ``unavailable`` with the reason."""
    result = ScenarioResult(scenario, options, clips, unavailable=dict(unavailable))
    for layout in layouts:
        for name, make in targets:
            if name in result.unavailable:
                continue
            target = make()
            try:
                figures = await run_layout(target, layout, clips, options)
            except Exception as exc:  # noqa: BLE001 - one failed run is reported, not fatal
                message = f"{name} {layout.label}: {type(exc).__name__}: {exc}"
                if exc.__cause__ is not None:
                    message += f" (cause: {exc.__cause__!r})"
                progress(f"FAILED {message}")
                result.failures.append(message)
                continue
            result.descriptions[name] = figures.description
            result.runs.append(figures)
    return result
