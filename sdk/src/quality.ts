// Connection quality (docs/web-client.md, "Connection quality") without a browser: the
// numbers a call UI shows per participant (loss, jitter, round trip, frames decoded), read
// from getStats by the client every `statsIntervalMs`, judged into a level with hysteresis.
// Time is passed in (ms, the clock of the readings).
//
// Two kinds of subject: this client's uplink (what the media server reports about what it
// receives from us: `remote-inbound-rtp`, plus the selected candidate pair's round trip), and
// each remote participant (the `inbound-rtp` of their tracks received here, summed).

/** A participant's connection as the user should see it: `excellent`, `good`, `poor`, or
 * `lost` (nothing of theirs arrived in the last interval although something was expected;
 * for this client: the media server hears nothing from it). */
export type ConnectionQuality = 'excellent' | 'good' | 'poor' | 'lost';

/** The numbers behind a level, over the last stats interval. */
export interface QualityStats {
  /** Fraction of packets lost (0..1). */
  loss: number;
  /** Interarrival jitter, ms (the worst of the streams). */
  jitterMs: number;
  /** Round trip to the media server, ms (this client only; null when unknown). */
  rttMs: number | null;
  /** Video frames decoded per second (remote participants with video; null without). */
  framesPerSecond: number | null;
  /** Packets received in the interval (remote participants), or reported received by the
   * media server (this client); 0 is `lost`. */
  packets: number;
}

/** Above these, `poor` (any one of them). */
const POOR = { loss: 0.1, jitterMs: 100, rttMs: 500 };
/** Above these, `good` rather than `excellent`. */
const GOOD = { loss: 0.02, jitterMs: 30, rttMs: 200 };
/** A better level must hold this long before it is shown (worse levels show at once): a
 * flickering badge is worse than a late one. */
export const QUALITY_UPGRADE_MS = 5000;

const RANK: Record<ConnectionQuality, number> = { lost: 0, poor: 1, good: 2, excellent: 3 };

/** The level of one interval's numbers, without hysteresis. */
export function qualityOf(s: QualityStats): ConnectionQuality {
  if (s.packets <= 0) return 'lost';
  if (s.loss > POOR.loss || s.jitterMs > POOR.jitterMs || (s.rttMs ?? 0) > POOR.rttMs) return 'poor';
  if (s.loss > GOOD.loss || s.jitterMs > GOOD.jitterMs || (s.rttMs ?? 0) > GOOD.rttMs) return 'good';
  return 'excellent';
}

/** One inbound stream's cumulative counters in a getStats reading (`inbound-rtp`). */
export interface InboundCounters {
  /** Who sends it (the identity of the remote track on that section). */
  identity: string;
  /** The section, the key of the stream across readings. */
  mid: string;
  video: boolean;
  packetsReceived: number;
  packetsLost: number;
  /** Seconds (as getStats gives it). */
  jitter: number;
  framesDecoded: number;
}

/** What the media server reports about one of this client's outbound streams
 * (`remote-inbound-rtp`): loss fraction, jitter and round trip in seconds. */
export interface UplinkReport {
  fractionLost: number;
  jitter: number;
  roundTripTime: number | null;
  /** Cumulative packets the media server received (`packetsReceived` is absent in some
   * browsers: null, then the uplink is judged alive). */
  packetsReceived: number | null;
}

/** A level change, for the event `connectionquality`. */
export interface QualityChange {
  /** The participant's identity; this client's own for its uplink. */
  identity: string;
  local: boolean;
  quality: ConnectionQuality;
  previous: ConnectionQuality | null;
  stats: QualityStats;
}

interface Counters {
  packets: number;
  lost: number;
  frames: number;
}

interface Level {
  shown: ConnectionQuality;
  /** The better level waiting to be shown, and since when it holds. */
  candidate: ConnectionQuality | null;
  since: number;
  stats: QualityStats;
}

/**
 * Turns getStats readings into per-participant levels, with hysteresis: a worse level is
 * shown at once, a better one once it has held for `QUALITY_UPGRADE_MS`. Participants with no
 * stream received here (a listener, everything muted or paused) have no level: nothing to
 * judge them by; `forget` them.
 */
export class QualityMonitor {
  private readonly counters = new Map<string, Counters>();
  private readonly levels = new Map<string, Level>();
  private uplinkPackets: number | null = null;
  private readAt: number | null = null;

  /** The current level of `identity` (null: not judged). */
  level(identity: string): ConnectionQuality | null {
    return this.levels.get(identity)?.shown ?? null;
  }

  /** The numbers behind the current level of `identity`. */
  stats(identity: string): QualityStats | null {
    return this.levels.get(identity)?.stats ?? null;
  }

  /** Stops judging `identity` (left, or nothing of theirs is expected any more). */
  forget(identity: string): void {
    this.levels.delete(identity);
  }

  /** Forgets everything (a new peer connection: its counters start from zero). */
  clear(): void {
    this.counters.clear();
    this.levels.clear();
    this.uplinkPackets = null;
    this.readAt = null;
  }

  /**
   * One reading at `now`: the inbound streams of the participants expected to send (muted or
   * paused ones left out by the caller), this client's uplink reports, and the selected
   * candidate pair's round trip (s, or null). Returns the levels that changed.
   */
  read(self: string, inbound: InboundCounters[], uplink: UplinkReport[], pairRtt: number | null, now: number): QualityChange[] {
    const seconds = this.readAt === null ? 0 : (now - this.readAt) / 1000;
    this.readAt = now;
    const byIdentity = new Map<string, { got: number; missed: number; jitter: number; frames: number; video: boolean; fresh: boolean }>();
    const seen = new Set<string>();
    for (const r of inbound) {
      seen.add(r.mid);
      const before = this.counters.get(r.mid);
      const now_ = { packets: r.packetsReceived, lost: Math.max(0, r.packetsLost), frames: r.framesDecoded };
      this.counters.set(r.mid, now_);
      const entry = byIdentity.get(r.identity) ?? { got: 0, missed: 0, jitter: 0, frames: 0, video: false, fresh: true };
      byIdentity.set(r.identity, entry);
      // A stream first seen, or whose counters went back (the browser made it anew), has no
      // interval yet: it is judged from the next reading.
      if (!before || now_.packets < before.packets || now_.frames < before.frames) continue;
      entry.fresh = false;
      entry.got += now_.packets - before.packets;
      entry.missed += Math.max(0, now_.lost - before.lost);
      entry.jitter = Math.max(entry.jitter, r.jitter * 1000);
      if (r.video) {
        entry.video = true;
        entry.frames += now_.frames - before.frames;
      }
    }
    for (const mid of [...this.counters.keys()]) if (!seen.has(mid)) this.counters.delete(mid);
    const changes: QualityChange[] = [];
    for (const [identity, e] of byIdentity) {
      if (e.fresh || seconds <= 0) continue;
      const stats: QualityStats = {
        loss: e.got + e.missed > 0 ? e.missed / (e.got + e.missed) : 0,
        jitterMs: Math.round(e.jitter),
        rttMs: null,
        framesPerSecond: e.video ? Math.round((e.frames / seconds) * 10) / 10 : null,
        packets: e.got,
      };
      const change = this.judge(identity, false, stats, now);
      if (change) changes.push(change);
    }
    if (uplink.length > 0) {
      let packets = 0;
      let known = false;
      for (const u of uplink) {
        if (u.packetsReceived !== null) {
          known = true;
          packets += u.packetsReceived;
        }
      }
      const previous = this.uplinkPackets;
      this.uplinkPackets = known ? packets : null;
      const rtts = uplink.map((u) => u.roundTripTime).filter((r): r is number => r !== null);
      const rtt = rtts.length > 0 ? Math.max(...rtts) : pairRtt;
      const stats: QualityStats = {
        loss: Math.max(...uplink.map((u) => Math.max(0, u.fractionLost))),
        jitterMs: Math.round(Math.max(...uplink.map((u) => u.jitter)) * 1000),
        rttMs: rtt === null ? null : Math.round(rtt * 1000),
        framesPerSecond: null,
        // Without a count, the reports themselves say the media server hears us.
        packets: known && previous !== null ? Math.max(0, packets - previous) : 1,
      };
      if (!(known && previous === null)) {
        const change = this.judge(self, true, stats, now);
        if (change) changes.push(change);
      }
    } else if (pairRtt !== null) {
      // Nothing sent: the round trip of the selected candidate pair is all there is to judge.
      const stats: QualityStats = { loss: 0, jitterMs: 0, rttMs: Math.round(pairRtt * 1000), framesPerSecond: null, packets: 1 };
      const change = this.judge(self, true, stats, now);
      if (change) changes.push(change);
    }
    return changes;
  }

  /** Applies the hysteresis to one subject's new numbers; returns the change, if any. */
  judge(identity: string, local: boolean, stats: QualityStats, now: number): QualityChange | null {
    const raw = qualityOf(stats);
    const level = this.levels.get(identity);
    if (!level) {
      this.levels.set(identity, { shown: raw, candidate: null, since: now, stats });
      return { identity, local, quality: raw, previous: null, stats };
    }
    level.stats = stats;
    if (RANK[raw] <= RANK[level.shown]) {
      level.candidate = null;
      if (raw === level.shown) return null;
      const previous = level.shown;
      level.shown = raw;
      return { identity, local, quality: raw, previous, stats };
    }
    // Better: shown once it held long enough (a worse-but-still-better candidate keeps the
    // clock: it is better than what is shown all along).
    if (level.candidate === null) {
      level.candidate = raw;
      level.since = now;
    } else if (RANK[raw] < RANK[level.candidate]) {
      level.candidate = raw;
    }
    if (now - level.since < QUALITY_UPGRADE_MS) return null;
    const previous = level.shown;
    level.shown = level.candidate;
    level.candidate = null;
    return { identity, local, quality: level.shown, previous, stats };
  }
}
