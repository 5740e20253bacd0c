// @ts-check
/**
 * @file Camera and microphone: acquiring them with fallbacks, listing devices, and turning
 * getUserMedia failures into messages a person can act on. No UI here.
 */

/**
 * @typedef {object} MediaChoice
 * @property {boolean} audio
 * @property {boolean} video
 * @property {string} [audioDeviceId]
 * @property {string} [videoDeviceId]
 */

/**
 * What {@link acquire} got: the stream (possibly without one kind) and the problems met.
 * @typedef {object} Acquired
 * @property {MediaStream} stream
 * @property {MediaProblem | null} problem why a wanted kind is missing (null: got everything)
 */

/**
 * @typedef {object} MediaProblem
 * @property {'denied' | 'no-device' | 'busy' | 'insecure' | 'unsupported' | 'failed'} kind
 * @property {string} message what to tell the person
 * @property {boolean} retry whether "try again" can help
 */

/**
 * A getUserMedia error as a message for people.
 * @param {unknown} error
 * @param {string} what "camera and microphone", "camera" or "microphone"
 * @returns {MediaProblem}
 */
export function describeMediaError(error, what) {
  const name = error instanceof DOMException || error instanceof Error ? error.name : '';
  switch (name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return {
        kind: 'denied',
        message: `Access to your ${what} is blocked. Allow it in your browser's site settings (the icon next to the address), then choose "Try again". You can also join without them.`,
        retry: true,
      };
    case 'NotFoundError':
    case 'OverconstrainedError':
      return {
        kind: 'no-device',
        message: `No ${what} found. Connect one and choose "Try again", or join without it.`,
        retry: true,
      };
    case 'NotReadableError':
    case 'AbortError':
      return {
        kind: 'busy',
        message: `Your ${what} could not be started: another application may be using it. Close it and choose "Try again".`,
        retry: true,
      };
    default:
      return {
        kind: 'failed',
        message: `Your ${what} could not be started (${name || 'unknown error'}).`,
        retry: true,
      };
  }
}

/**
 * @param {MediaChoice} choice
 * @returns {MediaStreamConstraints}
 */
function constraints(choice) {
  return {
    audio: choice.audio
      ? {
          ...(choice.audioDeviceId ? { deviceId: { exact: choice.audioDeviceId } } : {}),
          echoCancellation: true,
          noiseSuppression: true,
        }
      : false,
    video: choice.video
      ? {
          ...(choice.videoDeviceId ? { deviceId: { exact: choice.videoDeviceId } } : {}),
          width: { ideal: 640 },
          height: { ideal: 480 },
          frameRate: { ideal: 24, max: 30 },
        }
      : false,
  };
}

/**
 * Get the camera and/or microphone; if both are wanted and that fails for lack of one device,
 * try each alone, so a person without a camera still joins with their microphone.
 * @param {MediaChoice} choice
 * @returns {Promise<Acquired>}
 */
export async function acquire(choice) {
  if (!window.isSecureContext) {
    return {
      stream: new MediaStream(),
      problem: {
        kind: 'insecure',
        message: 'This page must be opened over https (or on localhost) to use your camera and microphone.',
        retry: false,
      },
    };
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    return {
      stream: new MediaStream(),
      problem: {
        kind: 'unsupported',
        message:
          'This browser cannot use a camera or microphone. Try a recent Chrome, Edge, Firefox or Safari.',
        retry: false,
      },
    };
  }
  if (!choice.audio && !choice.video) return { stream: new MediaStream(), problem: null };
  const both = choice.audio && choice.video;
  try {
    return { stream: await navigator.mediaDevices.getUserMedia(constraints(choice)), problem: null };
  } catch (error) {
    const problem = describeMediaError(
      error,
      both ? 'camera and microphone' : choice.video ? 'camera' : 'microphone',
    );
    if (!both || problem.kind === 'denied') return { stream: new MediaStream(), problem };
    // One of the two may be missing or busy: keep whichever works.
    for (const single of [
      { ...choice, video: false },
      { ...choice, audio: false },
    ]) {
      try {
        const stream = await navigator.mediaDevices.getUserMedia(constraints(single));
        const missing = single.video ? 'microphone' : 'camera';
        return { stream, problem: describeMediaError(error, missing) };
      } catch {
        // try the other one
      }
    }
    return { stream: new MediaStream(), problem };
  }
}

/**
 * Cameras and microphones (labels are empty before permission is granted).
 * @returns {Promise<{ cameras: MediaDeviceInfo[], microphones: MediaDeviceInfo[] }>}
 */
export async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return { cameras: [], microphones: [] };
  const devices = await navigator.mediaDevices.enumerateDevices();
  return {
    cameras: devices.filter((d) => d.kind === 'videoinput' && d.deviceId),
    microphones: devices.filter((d) => d.kind === 'audioinput' && d.deviceId),
  };
}

/**
 * The device a live track comes from.
 * @param {MediaStreamTrack | undefined} track
 * @returns {string | undefined}
 */
export function deviceIdOf(track) {
  return track?.getSettings().deviceId;
}

/** @param {MediaStream | null} stream */
export function stopStream(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}
