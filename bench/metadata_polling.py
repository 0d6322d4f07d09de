"""Waiting for AI metadata: how many API calls one polling round costs.

1,000 images are added to 2 packs with ``run --no-wait`` while the sandbox takes 10 s to enrich each
image; then a plain ``packsync run`` waits for them. The sandbox notes the arrival of every
``GET /packs/{id}``; arrivals less than 100 ms apart form one round. The first round is the run's own
read of each pack (scan → plan); every later round is a metadata poll and should read each pack that
still has pending images once.
"""

from __future__ import annotations

from harness import PACKS_GET, Context, Row, Setup, calls_dict, packsync_argv, run_child, write_images

PACKS = 2
ENRICH_DELAYS = (5.0, 5.0)
GAP_S = 0.100


def _rounds(times: list[float]) -> list[list[float]]:
    rounds: list[list[float]] = []
    for t in sorted(times):
        if rounds and t - rounds[-1][-1] < GAP_S:
            rounds[-1].append(t)
        else:
            rounds.append([t])
    return rounds


def run(ctx: Context) -> list[Row]:
    files = 100 if ctx.smoke else 1000
    delays = (1.0, 1.0) if ctx.smoke else ENRICH_DELAYS
    work = ctx.workdir / "metadata"
    with ctx.sandbox(enrich_delays=delays) as sandbox:
        mappings = []
        for p in range(PACKS):
            folder = work / f"pack{p}"
            write_images(folder, range(1 + p * files // PACKS, 1 + (p + 1) * files // PACKS))
            mappings.append((folder, sandbox.new_pack(f"metadata-{p}")))
        config = Setup(work, sandbox.base_url, concurrency=8, mappings=mappings).write()
        ctx.log(f"metadata: adding {files} images to {PACKS} packs without waiting")
        added = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=600)
        if added.returncode != 0:
            raise RuntimeError(f"packsync run --no-wait failed: {added.tail()}")
        sandbox.forget_arrivals()
        ctx.log(f"metadata: packsync run, waiting for metadata ({sum(delays):.0f} s per image in the sandbox)")
        waited = run_child(packsync_argv(config, "run"), cwd=work, timeout=900)
        calls = sandbox.calls
        gets = sandbox.arrivals_of(*PACKS_GET)
        pending_left = sandbox.pending_metadata([pack_id for _, pack_id in mappings])
    rounds = _rounds(gets)
    polls = rounds[1:]
    per_round = [len(r) for r in polls]
    only_gets = set(calls) == {PACKS_GET}
    worst = max(per_round, default=0)
    ok = waited.returncode == 0 and only_gets and bool(polls) and len(rounds[0]) == PACKS \
        and all(1 <= n <= PACKS for n in per_round)
    start = rounds[0][0] if rounds else 0.0
    return [Row(
        "metadata", f"metadata polling for {files:,} pending images in {PACKS} packs",
        f"GET /packs/{{id}} per polling round (arrivals < {GAP_S * 1000:.0f} ms apart) ÷ packs polled; "
        "worst round",
        worst / PACKS, "= 1 (one GET per pack per round)", ok,
        f"{len(polls)} polling rounds, GETs per round {per_round}, at +{[round(r[0] - start, 1) for r in polls]} s "
        f"after the run's own pack reads ({len(rounds[0]) if rounds else 0} GETs); wait took {waited.wall_s:.1f} s "
        f"(sandbox enrichment {sum(delays):.0f} s per image); other calls: "
        f"{sorted(k for k in calls_dict(calls) if k != 'GET /packs/{id}') or 'none'}",
        {"rounds": [[round(t - start, 3) for t in r] for r in rounds], "calls": calls_dict(calls),
         "wait_run_s": waited.wall_s, "add_run_s": added.wall_s, "pending_after": pending_left,
         "returncode": waited.returncode, "output_tail": waited.tail(5)}, ok)]
