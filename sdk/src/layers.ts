// What the SDK sends: the camera's simulcast layers and the screen share's single layer.

/**
 * The camera's simulcast layers, lowest first (the order the media server expects, protocol
 * section 4a): a quarter (at 15 frames a second), half and full of the captured resolution,
 * each capped so the three together stay under about 2.1 Mbit/s. A subscriber gets one of
 * them, the best its link and its display need (docs/adaptive-video.md). Sent unless
 * `simulcast: false` (then the camera is the full layer alone, `fullLayer()`).
 */
export const CAMERA_LAYERS: readonly RTCRtpEncodingParameters[] = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 50000, maxFramerate: 15 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

/** The full layer's cap: a camera without simulcast, and the screen share. */
const FULL_MAX_BITRATE = 1500000;

/**
 * The simulcast layers of a camera whose frames are `width` x `height`: all of
 * `CAMERA_LAYERS` from 960 x 540 pixels up; `q` and `f` from 480 x 270; below, one layer
 * (no simulcast). Chromium (libwebrtc's simulcast table, by the count of pixels) encodes at
 * most that many layers and drops the ones above: a 640 x 480 camera (what `video: true`
 * gives) sent as `q;h;f` never sent `f` while `q` was on, and every subscriber got half the
 * resolution. Unknown size: all three.
 */
export function cameraLayers(width: number | undefined, height: number | undefined): RTCRtpEncodingParameters[] {
  const pixels = (width || 0) * (height || 0);
  if (pixels && pixels < 480 * 270) return fullLayer();
  const layers = !pixels || pixels >= 960 * 540 ? CAMERA_LAYERS : CAMERA_LAYERS.filter((l) => l.rid !== 'h');
  return layers.map((l) => ({ ...l }));
}

/**
 * One layer at full resolution, capped like the camera's full layer: a camera without
 * simulcast, and a screen share (text must stay readable; under `contentHint = 'detail'` the
 * browser lowers the frame rate, not the resolution, when its uplink is short).
 */
export function fullLayer(): RTCRtpEncodingParameters[] {
  return [{ maxBitrate: FULL_MAX_BITRATE }];
}
