// Media health (docs/web-client.md, "Media health") without a browser: inbound counters per
// received section, read from getStats by the client, judged into this client's media state
// and each remote participant's. Time is passed in (ms, the clock of the readings).

import type { MediaState, RemoteMediaState } from './events.js';

/** A remote track without new packets for this long is stalled. */
const STALL_MS = 3000;
/** A new remote track that has produced nothing yet is stalled only after this long: it waits
 * for a renegotiation round, its publisher's keyframe and a first decode, which on a busy
 * device took up to 7 s (a screen share in two Firefox pages); calling its participant's
 * connection poor meanwhile is a false alarm. */
const START_MS = 10000;
/** Inbound loss above this fraction is poor when it lasts `POOR_LOSS_INTERVALS` stats
 * intervals in a row: a single burst (a sender resuming with a jump in its sequence numbers,
 * as after a camera comes back on) is not a poor connection. */
const POOR_LOSS = 0.1;
const POOR_LOSS_INTERVALS = 2;

/** Inbound counters of one received section. */
interface Flow {
  packets: number;
  /** Frames decoded for video, packets for audio: what the user gets. */
  progress: number;
  lost: number;
  progressAt: number;
  flowed: boolean;
  lossyRuns: number;
}

/** One received section's counters in a getStats reading (`inbound-rtp`). */
export interface InboundReading {
  mid: string;
  video: boolean;
  packetsReceived: number;
  packetsLost: number;
  framesDecoded: number;
}

/** A received track as health sees it. */
export interface WatchedTrack {
  mid: string;
  identity: string;
  /** Muted by its publisher, or paused by the media server: nothing is expected from it, and
   * that is nobody's connection's fault. */
  excused: boolean;
}

/** The peer connection's side of the judgement. */
export interface TransportState {
  connectionState: RTCPeerConnectionState;
  /** No media section at all, negotiated (nothing to send or receive: nothing to connect). */
  nothingToConnect: boolean;
}

/** The counters of every received section of one peer connection. */
export class MediaHealth {
  private readonly flows = new Map<string, Flow>();
  /** When the inbound counters were last read: health is judged as of then. A stall is
   * time without progress between readings; judging it at an event between readings (a
   * participant joining) against the clock called a flowing track stalled whenever the
   * browser was slow to give its statistics (a busy Firefox at a renegotiation). */
  private readAt = 0;
  /** Outbound loss reported by the media server (RTCP), over the last interval. */
  private outboundLoss = 0;

  /** A track started arriving on `mid` at `now`: it gets the start grace period. */
  watch(mid: string, now: number): void {
    this.flows.set(mid, { packets: -1, progress: 0, lost: 0, progressAt: now, flowed: false, lossyRuns: 0 });
  }

  forget(mid: string): void {
    this.flows.delete(mid);
  }

  clear(): void {
    this.flows.clear();
  }

  /** The track on `mid` restarts at `now` (unmuted: the stall grace period again; resumed
   * after a pause, `fromKeyframe`: the start grace period, it begins at a keyframe). */
  restarted(mid: string, now: number, fromKeyframe: boolean): void {
    const flow = this.flows.get(mid);
    if (!flow) return;
    flow.progressAt = now;
    if (fromKeyframe) flow.flowed = false;
  }

  /** One getStats reading at `now`: the inbound sections, and the fraction lost of each
   * outbound stream the media server reported. */
  read(inbound: InboundReading[], outboundLoss: number[], now: number): void {
    for (const r of inbound) {
      const flow = this.flows.get(r.mid);
      if (!flow) continue;
      const packets = r.packetsReceived;
      const lost = Math.max(0, r.packetsLost);
      // Packets that never decode (e.g. without a keyframe) are a stall for video.
      const progress = r.video ? r.framesDecoded : packets;
      // Counters that went back are a receive stream the browser made anew, statistics and
      // all (Firefox does at renegotiations, even one that changes nothing of the section):
      // what it counts since is progress, and loss is measured from there.
      const restarted = packets < flow.packets || progress < flow.progress;
      if (flow.packets >= 0 && !restarted) {
        const got = packets - flow.packets;
        const missed = Math.max(0, lost - flow.lost);
        const loss = got + missed > 0 ? missed / (got + missed) : 0;
        flow.lossyRuns = loss > POOR_LOSS ? flow.lossyRuns + 1 : 0;
        if (progress > flow.progress) {
          flow.progressAt = now;
          flow.flowed = true;
        }
      } else if (progress > 0) {
        flow.progressAt = now;
        flow.flowed = true;
      }
      flow.packets = packets;
      flow.progress = progress;
      flow.lost = lost;
    }
    this.outboundLoss = outboundLoss.length ? outboundLoss.reduce((a, b) => a + Math.max(0, b), 0) / outboundLoss.length : 0;
    this.readAt = now;
  }

  /**
   * This client's media state and each listed participant's, as of the last reading.
   * `participants`: every remote identity (a participant with nothing expected follows this
   * client's own state).
   */
  judge(transport: TransportState, tracks: WatchedTrack[], participants: Iterable<string>): { state: MediaState; participants: Map<string, RemoteMediaState> } {
    const now = this.readAt;
    const byIdentity = new Map<string, { flowing: number; stalled: number }>();
    let expected = 0;
    let flowing = 0;
    let lossy = false;
    for (const t of tracks) {
      const flow = this.flows.get(t.mid);
      if (!flow || t.excused) continue;
      const entry = byIdentity.get(t.identity) || { flowing: 0, stalled: 0 };
      const quiet = now - flow.progressAt > (flow.flowed ? STALL_MS : START_MS);
      const poor = flow.lossyRuns >= POOR_LOSS_INTERVALS;
      if (flow.flowed || quiet) {
        if (quiet || poor) entry.stalled += 1;
        else entry.flowing += 1;
      }
      byIdentity.set(t.identity, entry);
      expected += 1;
      if (flow.flowed && !quiet) flowing += 1;
      if (poor) lossy = true;
    }
    let state: MediaState;
    switch (transport.connectionState) {
      case 'connected':
        state = (expected > 0 && flowing === 0 && [...this.flows.values()].some((f) => f.flowed))
          || lossy || this.outboundLoss > POOR_LOSS ? 'poor' : 'connected';
        break;
      case 'disconnected': state = 'reconnecting'; break;
      case 'failed': state = 'failed'; break;
      default:
        state = transport.nothingToConnect ? 'connected' : 'connecting';
    }
    const up = state === 'connected' || state === 'poor';
    const remote = new Map<string, RemoteMediaState>();
    for (const identity of participants) {
      const entry = byIdentity.get(identity);
      let media: RemoteMediaState;
      if (!entry) {
        // Nothing of theirs is expected here (a listener, or all muted): as good as our link.
        media = up ? 'connected' : 'connecting';
      } else if (entry.stalled > 0 && (entry.flowing > 0 || up)) {
        media = 'poor';
      } else if (entry.flowing > 0) {
        media = 'connected';
      } else {
        media = 'connecting';
      }
      if (!up && media === 'connected') media = 'connecting';
      remote.set(identity, media);
    }
    return { state, participants: remote };
  }
}
