// @ts-check
/**
 * @file A browser client for the Oktorus SFU signalling protocol v1 — no UI, no dependencies.
 *
 * The contract is docs/protocol.md: one WebSocket (`/v1/signal`), JSON messages, a `join` with an
 * access token, then two peer connections per participant: the *publish* PC (the client offers,
 * the server answers) and the *subscribe* PC (the server offers, the client answers), with ICE
 * candidates trickled both ways.
 *
 * ```js
 * import { SfuConnection, signalUrl } from '/static/protocol.js';
 * const sfu = new SfuConnection(signalUrl(location), token);
 * sfu.on('remotetrack', ({ trackId, mediaTrack, info }) => show(info?.participant, mediaTrack));
 * sfu.on('state', ({ state, error }) => console.log(state, error?.code));
 * const joined = await sfu.connect();               // throws a ProtocolError when refused
 * await sfu.publish(stream.getTracks(), stream);    // offer → `published`
 * await sfu.setMuted(stream.getAudioTracks()[0], true);
 * await sfu.leave();
 * ```
 *
 * Consent-gated recording (docs/consent.md): an agent calls `startRecording(['audio', 'video'],
 * notice)`; everyone else gets a `consent.request` event and answers with `grantConsent(request,
 * scope)` or `refuseConsent(request)`, and may `withdrawConsent({ erase })` later. Every change
 * arrives as `recording.state` (also kept in `sfu.recording`) — show "being recorded" from it.
 *
 * Reconnection, cheapest first:
 * - The signalling socket drops: the peer connections stay up (media keeps flowing) and a new
 *   socket sends `join` with the `resume` secret from `joined` (exponential back-off). The server
 *   keeps the participant for its resume window (30 s by default): same id, tracks,
 *   subscriptions and consent; `joined.resumed` is true and nothing else changes.
 * - A peer connection's ICE fails or stays disconnected, or the browser's network changes
 *   (`online`, `navigator.connection` change): ICE restarts in place on both peer connections
 *   (`restartIce()` + a new publish offer; the server re-offers the subscribe side with new
 *   credentials, or is asked to with `ice.restart`). DTLS, SRTP and every track id stay.
 * - Resumption refused (window over, another server) or ICE restart not working: a full re-join
 *   with the same token, re-publishing the same local tracks (and mute state) on fresh peer
 *   connections under a new participant id.
 *
 * Events (see {@link ConnectionEvents}); listen with `sfu.on(type, fn)`, which returns an
 * unsubscribe function, or with `addEventListener` (the detail is `CustomEvent.detail`).
 */

export const PROTOCOL_VERSION = 1;
export const CLOSE_NORMAL = 1000;
export const CLOSE_UNAUTHENTICATED = 4401;
export const CLOSE_RATE_LIMITED = 4429;
/** Close code this client uses when it gives a socket up (keep-alive or ICE failure). */
export const CLOSE_CLIENT_GAVE_UP = 4000;
/** Socket close codes after which re-joining cannot help. */
const TERMINAL_CLOSE_CODES = new Set([CLOSE_UNAUTHENTICATED, CLOSE_RATE_LIMITED, 1008]);
/** Error codes after which re-joining cannot help. */
const TERMINAL_ERROR_CODES = new Set(['unauthenticated', 'forbidden', 'not_found', 'rate_limited']);
const MAX_REDIRECTS = 3;

/** @typedef {'publish' | 'subscribe'} PcName */
/** @typedef {'idle' | 'connecting' | 'joined' | 'reconnecting' | 'closed'} ConnectionState */

/**
 * A participant as the server describes it.
 * @typedef {object} ParticipantInfo
 * @property {string} id
 * @property {string} identity
 * @property {string} role
 */

/**
 * A published track as the server describes it (`mid` only if the server sends it).
 * @typedef {object} TrackInfo
 * @property {string} id
 * @property {'audio' | 'video'} kind
 * @property {string} participant
 * @property {boolean} muted
 * @property {string} [mid]
 * @property {TrackSource} [source] what it shows (server addition; absent from older servers)
 */

/** @typedef {'camera' | 'microphone' | 'screen'} TrackSource */

/** @typedef {'audio' | 'video'} MediaKind */

/**
 * One participant's answer to the room's recording request (`recording.state.requests`).
 * @typedef {'pending' | 'granted' | 'refused' | 'withdrawn'} ConsentAnswer
 */

/**
 * `recording.state` (and `joined.recording`): who is being recorded now (`participants`, with
 * what they agreed to) and how each asked participant answered (`requests`).
 * @typedef {object} RecordingState
 * @property {boolean} active someone is being recorded
 * @property {string | null} recording the room's active recording request, if any
 * @property {Array<{ id: string, scope: MediaKind[] }>} participants
 * @property {Array<{ participant: string, state: ConsentAnswer }>} requests
 */

/**
 * `consent.request`: an agent asks this participant to agree to be recorded.
 * @typedef {object} ConsentRequest
 * @property {string} request id to answer with ({@link SfuConnection#grantConsent})
 * @property {string} notice the exact text to show
 * @property {MediaKind[]} scope what would be recorded
 * @property {string} by participant id of the agent who asks
 * @property {string} purpose
 */

/**
 * A consent token the server issued for this participant (`consent.granted`); `renewed` when it
 * replaces an expiring one while the recording goes on.
 * @typedef {object} ConsentGrant
 * @property {string} token
 * @property {string} jti
 * @property {boolean} renewed
 */

/**
 * The reply to `join`.
 * @typedef {object} JoinedInfo
 * @property {ParticipantInfo} participant
 * @property {{ id: string }} room
 * @property {ParticipantInfo[]} participants
 * @property {TrackInfo[]} tracks
 * @property {RecordingState} recording
 * @property {RTCIceServer[]} ice_servers
 * @property {string} [resume] secret that lets a new socket take this participant over
 * @property {number} [resume_window] seconds the server keeps a dropped participant
 * @property {boolean} [resumed] true when this `joined` resumed the same participant
 */

/** @typedef {{ type: string, id?: string, [field: string]: unknown }} Message */

/**
 * @typedef {object} TrackSettings
 * @property {'low' | 'medium' | 'high'} [quality]
 * @property {number} [width]
 * @property {number} [height]
 * @property {boolean} [paused]
 */

/**
 * Simulcast layers of a published video, highest first (the server reads the order so):
 * full, half and quarter resolution. The browser sends only the layers the captured size
 * allows (three from 960x540 up) and as many as its bandwidth estimate lets through.
 * @type {RTCRtpEncodingParameters[]}
 */
const SIMULCAST_ENCODINGS = [
  { rid: 'h', maxBitrate: 1_500_000 },
  { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
];

/**
 * @typedef {object} ConnectionOptions
 * @property {boolean} [reconnect] re-join automatically after a drop (default true)
 * @property {number} [requestTimeoutMs] timeout of one request (default 10000)
 * @property {number} [pingIntervalMs] keep-alive `ping` period (default 15000)
 * @property {number} [reconnectDelayMs] first back-off delay (default 500)
 * @property {number} [maxReconnectDelayMs] largest back-off delay (default 5000)
 * @property {number} [giveUpAfterMs] stop re-joining after this long (default 120000)
 * @property {number} [iceDisconnectedMs] an ICE `disconnected` this long restarts ICE (default 2000)
 * @property {number} [iceRestartTimeoutMs] ICE restarted but not connected after this long: full
 *   re-join on fresh peer connections (default 8000)
 * @property {number} [videoStallMs] a remote video that decodes no new frame this long (not muted, not
 *   paused) is nudged: paused and resumed, which makes the server ask its publisher for a keyframe
 *   (default 3000; 0 turns the watchdog off)
 * @property {boolean} [simulcast] publish camera video as three simulcast layers (default true)
 * @property {(url: string) => WebSocket} [createSocket] for tests
 */

/**
 * What a `state` event carries.
 * @typedef {object} StateDetail
 * @property {ConnectionState} state
 * @property {ProtocolError} [error] why the connection closed or is reconnecting
 * @property {number} [attempt] re-join attempt (while reconnecting)
 * @property {number} [delayMs] wait before that attempt
 */

/**
 * A remote track started arriving (or a subscribe m-line now carries another track).
 * @typedef {object} RemoteTrackDetail
 * @property {string} trackId
 * @property {string} mid
 * @property {MediaStreamTrack} mediaTrack
 * @property {TrackInfo | undefined} info
 */

/**
 * Events of {@link SfuConnection} and their details.
 * @typedef {{
 *   'state': StateDetail,
 *   'joined': { joined: JoinedInfo, rejoin: boolean, resumed: boolean },
 *   'icerestart': { reason: string },
 *   'published': { tracks: TrackInfo[] },
 *   'remotetrack': RemoteTrackDetail,
 *   'remotetrackended': { trackId: string, mid: string },
 *   'participant.joined': { participant: ParticipantInfo },
 *   'participant.left': { participant: ParticipantInfo },
 *   'track.published': { track: TrackInfo },
 *   'track.unpublished': { track: TrackInfo },
 *   'track.updated': { track: TrackInfo },
 *   'speaker.changed': { speakers: string[] },
 *   'recording.state': RecordingState,
 *   'consent.request': ConsentRequest,
 *   'consent.granted': ConsentGrant,
 *   'server.draining': { deadline: number },
 *   'pcstate': { pc: PcName, state: RTCPeerConnectionState },
 *   'error': { error: ProtocolError },
 * }} ConnectionEvents
 */

/** A refusal or failure, with one of protocol v1's error codes (or a client-side one). */
export class ProtocolError extends Error {
  /**
   * @param {string} code `bad_request`, `unauthenticated`, … or client-side: `timeout`,
   *   `closed`, `unreachable`, `negotiation_failed`
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = 'ProtocolError';
    /** @readonly */
    this.code = code;
  }
}

/**
 * The signalling URL of the server that served `location` (`ws:` or `wss:`).
 * @param {{ protocol: string, host: string }} location
 * @returns {string}
 */
export function signalUrl(location) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/signal`;
}

/**
 * The claims of a JWT, decoded WITHOUT verification (for display and early expiry checks only;
 * the server is the authority). Null if it does not look like a JWT.
 * @param {string} token
 * @returns {{ exp?: number, sub?: string, room?: string, role?: string, grants?: string[] } | null}
 */
export function peekTokenClaims(token) {
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/**
 * `{mid: track id}` from `a=mid` + `a=msid:<participant> <track>` lines of a server offer
 * (the fallback when the offer has no `tracks` field). Inactive m-lines carry no track.
 * @param {string} sdp
 * @returns {Record<string, string>}
 */
export function tracksFromSdp(sdp) {
  /** @type {Record<string, string>} */
  const tracks = {};
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section)?.[1];
    const msid = /^a=msid:\S+ (\S+)/m.exec(section)?.[1];
    const inactive = /^a=inactive\b/m.test(section) || /^\S+ 0 /.test(section);
    if (mid && msid && !inactive) tracks[mid] = msid;
  }
  return tracks;
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * @param {unknown} value
 * @returns {value is TrackInfo}
 */
function isTrack(value) {
  return (
    isObject(value) &&
    typeof value.id === 'string' &&
    (value.kind === 'audio' || value.kind === 'video') &&
    typeof value.participant === 'string'
  );
}

/**
 * @param {unknown} value
 * @returns {value is ParticipantInfo}
 */
function isParticipant(value) {
  return isObject(value) && typeof value.id === 'string' && typeof value.identity === 'string';
}

/** @param {unknown} value @returns {value is MediaKind} */
function isKind(value) {
  return value === 'audio' || value === 'video';
}

/** @param {unknown} value @returns {MediaKind[]} */
function kinds(value) {
  return Array.isArray(value) ? value.filter(isKind) : [];
}

const ANSWERS = new Set(['pending', 'granted', 'refused', 'withdrawn']);

/**
 * A `recording.state` (or `joined.recording`) as sent, checked field by field.
 * @param {unknown} value
 * @returns {RecordingState}
 */
export function recordingStateOf(value) {
  const m = isObject(value) ? value : {};
  return {
    active: m.active === true,
    recording: typeof m.recording === 'string' ? m.recording : null,
    participants: (Array.isArray(m.participants) ? m.participants : [])
      .filter((p) => isObject(p) && typeof p.id === 'string')
      .map((p) => ({ id: String(p.id), scope: kinds(p.scope) })),
    requests: (Array.isArray(m.requests) ? m.requests : [])
      .filter((r) => isObject(r) && typeof r.participant === 'string' && ANSWERS.has(String(r.state)))
      .map((r) => ({
        participant: String(r.participant),
        state: /** @type {ConsentAnswer} */ (String(r.state)),
      })),
  };
}

/** A state with nothing requested and nobody recorded. @returns {RecordingState} */
function noRecording() {
  return { active: false, recording: null, participants: [], requests: [] };
}

/**
 * One WebSocket speaking protocol v1: JSON framing, requests matched to replies by `id`.
 *
 * Events: `message` (CustomEvent<Message>: everything that is not the reply to a pending
 * request) and `close` (CustomEvent<{code: number, reason: string}>, exactly once).
 */
export class SignalSocket extends EventTarget {
  /**
   * @param {string} url
   * @param {(url: string) => WebSocket} [createSocket]
   */
  constructor(url, createSocket) {
    super();
    this.url = url;
    /** The underlying socket (exposed for diagnostics and tests). @type {WebSocket} */
    this.ws = createSocket ? createSocket(url) : new WebSocket(url);
    /** @type {Map<string, { resolve: (m: Message) => void, reject: (e: ProtocolError) => void, timer: ReturnType<typeof setTimeout> }>} */
    this.pending = new Map();
    this.closed = false;
    this.sequence = 0;
    this.ws.addEventListener('message', (event) => this.#onMessage(event));
    this.ws.addEventListener('close', (event) => this.#finish(event.code, event.reason));
  }

  /**
   * Resolves once the socket is open.
   * @param {number} timeoutMs
   * @returns {Promise<void>}
   */
  opened(timeoutMs) {
    if (this.ws.readyState === WebSocket.OPEN) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.abandon('connect timeout');
        reject(new ProtocolError('unreachable', 'the signalling server did not answer in time'));
      }, timeoutMs);
      this.ws.addEventListener('open', () => {
        clearTimeout(timer);
        resolve();
      });
      this.addEventListener('close', () => {
        clearTimeout(timer);
        reject(new ProtocolError('unreachable', 'could not reach the signalling server'));
      });
    });
  }

  /**
   * Send one message (no reply expected).
   * @param {Message} message
   */
  send(message) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
      throw new ProtocolError('closed', 'the signalling connection is closed');
    }
    this.ws.send(JSON.stringify(message));
  }

  /** A fresh request id with a prefix. @param {string} prefix */
  nextId(prefix = 'r') {
    this.sequence += 1;
    return `${prefix}${this.sequence}`;
  }

  /**
   * Send a request and wait for its reply (or its `error`, which rejects).
   * @param {Message} message
   * @param {number} timeoutMs
   * @returns {Promise<Message>}
   */
  request(message, timeoutMs) {
    const id = this.nextId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ProtocolError('timeout', `no reply to '${message.type}' in time`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.send({ ...message, id });
      } catch (error) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(error);
      }
    });
  }

  /**
   * Give the socket up now, without waiting for the closing handshake (a dead network can
   * hold that for minutes); `close` fires at once with `code`.
   * @param {string} reason
   * @param {number} [code]
   */
  abandon(reason, code = CLOSE_CLIENT_GAVE_UP) {
    try {
      this.ws.close(code, reason.slice(0, 100));
    } catch {
      // already closing
    }
    this.#finish(code, reason);
  }

  /** @param {MessageEvent} event */
  #onMessage(event) {
    if (this.closed || typeof event.data !== 'string') return;
    /** @type {unknown} */
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return; // the server only sends JSON; ignore anything else
    }
    if (!isObject(message) || typeof message.type !== 'string') return;
    const typed = /** @type {Message} */ (message);
    const pending = typeof typed.id === 'string' ? this.pending.get(typed.id) : undefined;
    if (pending && typed.id !== undefined) {
      this.pending.delete(typed.id);
      clearTimeout(pending.timer);
      if (typed.type === 'error') {
        pending.reject(new ProtocolError(String(typed.code ?? 'internal'), String(typed.message ?? 'error')));
      } else {
        pending.resolve(typed);
      }
      return;
    }
    this.dispatchEvent(new CustomEvent('message', { detail: typed }));
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(new ProtocolError('closed', `the connection closed (${code}) before '${id}'`));
    }
    this.pending.clear();
    this.dispatchEvent(new CustomEvent('close', { detail: { code, reason } }));
  }
}

/**
 * A participant's connection to the SFU: signalling, publish and subscribe peer connections,
 * automatic re-join. See the module comment for an example.
 */
export class SfuConnection extends EventTarget {
  /** @type {Required<Omit<ConnectionOptions, 'createSocket'>> & { createSocket: ((url: string) => WebSocket) | undefined }} */
  options;
  /** @type {ConnectionState} */
  state = 'idle';
  /** The current signalling socket (null between sockets). @type {SignalSocket | null} */
  socket = null;
  /** @type {RTCPeerConnection | null} */
  publishPc = null;
  /** @type {RTCPeerConnection | null} */
  subscribePc = null;
  /** The last `joined` reply. @type {JoinedInfo | null} */
  joined = null;
  /** Other participants now in the room, by id. @type {Map<string, ParticipantInfo>} */
  participants = new Map();
  /** Every track now in the room (ours included), by id. @type {Map<string, TrackInfo>} */
  tracks = new Map();
  /** Remote tracks being received: track id → MediaStreamTrack. @type {Map<string, MediaStreamTrack>} */
  remoteTracks = new Map();
  /** The room's latest `recording.state` (from `joined`, then every change). @type {RecordingState} */
  recording = noRecording();
  /**
   * The consent this participant gave in this room (the latest token, renewals included);
   * null before, after withdrawing, and after a re-join (a new participant is asked again).
   * @type {{ token: string, jti: string } | null}
   */
  consent = null;

  /** @type {Array<{ track: MediaStreamTrack | null, kind: string, source?: TrackSource }>} */
  #local = [];
  /** @type {MediaStream | null} */
  #localStream = null;
  /** @type {Map<MediaStreamTrack, RTCRtpTransceiver>} */
  #senders = new Map();
  /** Server track id of each published local track. @type {Map<MediaStreamTrack, string>} */
  #publishedIds = new Map();
  /** @type {Map<MediaStreamTrack, boolean>} */
  #muted = new Map();
  /** subscribe m-line → track id it carries now. @type {Map<string, string>} */
  #midTracks = new Map();
  #url;
  /** The URL given to the constructor: where re-joins start again once a redirect target fails. */
  #entryUrl;
  #token;
  #leaving = false;
  #redirects = 0;
  #attempt = 0;
  /** @type {number | null} */
  #droppedAt = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #reconnectTimer = null;
  /** @type {ReturnType<typeof setInterval> | null} */
  #pingTimer = null;
  /** @type {Promise<unknown>} */
  #publishChain = Promise.resolve();
  /** @type {Promise<unknown>} */
  #subscribeChain = Promise.resolve();
  /** Candidates held until the server has the PC they belong to. */
  #held = {
    publish: /** @type {Array<RTCIceCandidateInit | null>} */ ([]),
    subscribe: /** @type {Array<RTCIceCandidateInit | null>} */ ([]),
  };
  #canTrickle = { publish: false, subscribe: false };
  /** @type {Record<PcName, ReturnType<typeof setTimeout> | null>} */
  #iceTimers = { publish: null, subscribe: null };
  /** Remote video progress for the stall watchdog. @type {Map<string, { frames: number, since: number, nudges: number }>} */
  #videoProgress = new Map();
  /** @type {Set<string>} */
  #pausedByUser = new Set();
  /** @type {ReturnType<typeof setInterval> | null} */
  #stallTimer = null;
  /** How many stalled remote videos were nudged (see `videoStallMs`). */
  stallNudges = 0;
  /** How many in-place ICE restarts this connection started. */
  iceRestarts = 0;
  /** The `resume` secret of our participant (null: the next join is a fresh one). @type {string | null} */
  #resume = null;
  /** @type {Promise<void> | null} */
  #restarting = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #restartWatch = null;
  /** Removes the network-change listeners. @type {(() => void) | null} */
  #unwatchNetwork = null;

  /**
   * @param {string} url the signalling URL (`ws(s)://host/v1/signal`); see {@link signalUrl}
   * @param {string} token an access token for one room
   * @param {ConnectionOptions} [options]
   */
  constructor(url, token, options = {}) {
    super();
    this.#url = url;
    this.#entryUrl = url;
    this.#token = token;
    this.options = {
      reconnect: options.reconnect ?? true,
      requestTimeoutMs: options.requestTimeoutMs ?? 10000,
      pingIntervalMs: options.pingIntervalMs ?? 15000,
      reconnectDelayMs: options.reconnectDelayMs ?? 500,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 5000,
      giveUpAfterMs: options.giveUpAfterMs ?? 120000,
      iceDisconnectedMs: options.iceDisconnectedMs ?? 2000,
      iceRestartTimeoutMs: options.iceRestartTimeoutMs ?? 8000,
      videoStallMs: options.videoStallMs ?? 3000,
      simulcast: options.simulcast ?? true,
      createSocket: options.createSocket,
    };
  }

  /** Our participant (changes on every re-join). */
  get participant() {
    return this.joined?.participant ?? null;
  }

  /**
   * Listen to one event type; returns a function that removes the listener.
   * @template {keyof ConnectionEvents} K
   * @param {K} type
   * @param {(detail: ConnectionEvents[K]) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    /** @param {Event} event */
    const wrapped = (event) => listener(/** @type {CustomEvent<ConnectionEvents[K]>} */ (event).detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /**
   * @template {keyof ConnectionEvents} K
   * @param {K} type
   * @param {ConnectionEvents[K]} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * @param {ConnectionState} state
   * @param {Omit<StateDetail, 'state'>} [extra]
   */
  #setState(state, extra = {}) {
    this.state = state;
    this.#emit('state', { state, ...extra });
  }

  /**
   * Open the socket and join (the first time). Rejects with a ProtocolError when refused or
   * unreachable; after that, drops are handled by re-joining (see `state` events).
   * @returns {Promise<JoinedInfo>}
   */
  async connect() {
    if (this.state !== 'idle') throw new ProtocolError('conflict', 'connect() was already called');
    this.#setState('connecting');
    try {
      const joined = await this.#join(false);
      return joined;
    } catch (error) {
      const failure = asProtocolError(error);
      this.#shutdown();
      const socket = this.socket;
      this.socket = null;
      socket?.abandon('join failed', CLOSE_NORMAL);
      this.#setState('closed', { error: failure });
      throw failure;
    }
  }

  /**
   * Publish these local tracks (replacing what was published before): tracks no longer listed
   * stop being sent, new ones get an m-line. Resolves with the server's track list.
   * @param {MediaStreamTrack[]} tracks
   * @param {MediaStream} [stream] the stream they belong to (kept in `a=msid`)
   * @returns {Promise<TrackInfo[]>}
   */
  publish(tracks, stream) {
    this.#localStream = stream ?? this.#localStream ?? new MediaStream();
    const keep = new Set(tracks);
    for (const slot of this.#local) {
      if (slot.track && !keep.has(slot.track) && slot.source !== 'screen') slot.track = null;
    }
    for (const track of tracks) {
      if (this.#local.some((slot) => slot.track === track)) continue;
      const free = this.#local.find(
        (slot) => slot.track === null && slot.kind === track.kind && slot.source !== 'screen',
      );
      if (free) free.track = track;
      else this.#local.push({ track, kind: track.kind });
    }
    return this.#queuePublish();
  }

  /**
   * Share a screen capture as an extra video track marked `source: "screen"` (beside the
   * camera; `publish()` leaves it alone). Resolves with the server's track list.
   * @param {MediaStreamTrack} track from `getDisplayMedia()`
   * @returns {Promise<TrackInfo[]>}
   */
  shareScreen(track) {
    if ('contentHint' in track && !track.contentHint) track.contentHint = 'detail';
    const slot = this.#local.find((s) => s.source === 'screen' && s.track === null);
    if (slot) slot.track = track;
    else this.#local.push({ track, kind: track.kind, source: 'screen' });
    return this.#queuePublish();
  }

  /** Stop sharing the screen (its track is not stopped here). @returns {Promise<TrackInfo[]>} */
  stopScreenShare() {
    for (const slot of this.#local) if (slot.source === 'screen') slot.track = null;
    return this.#queuePublish();
  }

  /** The screen track being shared, if any. @returns {MediaStreamTrack | null} */
  get screenTrack() {
    return this.#local.find((s) => s.source === 'screen' && s.track)?.track ?? null;
  }

  /**
   * Send `newTrack` instead of `oldTrack` without renegotiating (e.g. another camera).
   * @param {MediaStreamTrack} oldTrack
   * @param {MediaStreamTrack} newTrack
   */
  async replaceTrack(oldTrack, newTrack) {
    const slot = this.#local.find((s) => s.track === oldTrack);
    if (!slot) throw new ProtocolError('not_found', 'that track is not published');
    slot.track = newTrack;
    this.#muted.set(newTrack, this.#muted.get(oldTrack) ?? false);
    const id = this.#publishedIds.get(oldTrack);
    if (id) this.#publishedIds.set(newTrack, id);
    const transceiver = this.#senders.get(oldTrack);
    if (transceiver) {
      this.#senders.delete(oldTrack);
      this.#senders.set(newTrack, transceiver);
      await transceiver.sender.replaceTrack(newTrack);
    }
  }

  /**
   * The server id of a published local track (undefined until `published`).
   * @param {MediaStreamTrack} track
   */
  trackId(track) {
    return this.#publishedIds.get(track);
  }

  /**
   * Mute or unmute a published local track: the track is disabled locally (it keeps sending
   * silence / black frames, so the server does not time it out) and the server stops
   * forwarding it and tells everyone (`track.updated`). Remembered across re-joins.
   * @param {MediaStreamTrack} track
   * @param {boolean} muted
   */
  async setMuted(track, muted) {
    this.#muted.set(track, muted);
    track.enabled = !muted;
    const id = this.#publishedIds.get(track);
    if (id && this.state === 'joined') await this.request({ type: 'mute', track: id, muted });
  }

  /**
   * Change what this subscriber receives of a remote track.
   * @param {string} trackId
   * @param {TrackSettings} settings
   */
  async setTrackSettings(trackId, settings) {
    if (settings.paused !== undefined) {
      if (settings.paused) this.#pausedByUser.add(trackId);
      else this.#pausedByUser.delete(trackId);
    }
    await this.request({ type: 'track.settings', track: trackId, ...settings });
  }

  /** @param {string[]} trackIds */
  async subscribe(trackIds) {
    await this.request({ type: 'subscribe', tracks: trackIds });
  }

  /** @param {string[]} trackIds */
  async unsubscribe(trackIds) {
    await this.request({ type: 'unsubscribe', tracks: trackIds });
  }

  /**
   * Send a request on the current socket and wait for its reply.
   * @param {Message} message
   * @returns {Promise<Message>}
   */
  request(message) {
    if (!this.socket || this.state !== 'joined') {
      return Promise.reject(new ProtocolError('closed', 'not connected'));
    }
    return this.socket.request(message, this.options.requestTimeoutMs);
  }

  // --- recording and consent (docs/consent.md) --------------------------------------------

  /**
   * Ask everyone else in the room to agree to be recorded (needs the `record` grant). Each of
   * them gets `consent.request` with exactly this `notice`; nobody is recorded before they agree.
   * Rejects with `forbidden`, `conflict` (a request is already active) or `bad_request`.
   * @param {MediaKind[]} scope what to record, e.g. `['audio', 'video']`
   * @param {string} notice the exact text shown to each participant
   * @returns {Promise<void>}
   */
  async startRecording(scope, notice) {
    await this.request({ type: 'recording.start', scope: [...scope], notice });
  }

  /** End the room's recording request and every recording of it (`record` grant). */
  async stopRecording() {
    await this.request({ type: 'recording.stop' });
  }

  /**
   * Agree to be recorded: answer a `consent.request` with a scope within what was requested.
   * Resolves with the consent token the server issued (also emitted as `consent.granted`).
   * @param {string} request the `request` id of the `consent.request`
   * @param {MediaKind[]} scope
   * @returns {Promise<{ token: string, jti: string }>}
   */
  async grantConsent(request, scope) {
    const reply = await this.request({ type: 'consent.grant', request, scope: [...scope] });
    if (typeof reply.token !== 'string' || typeof reply.jti !== 'string')
      throw new ProtocolError('internal', "'consent.granted' without token");
    this.consent = { token: reply.token, jti: reply.jti };
    this.#emit('consent.granted', { token: reply.token, jti: reply.jti, renewed: false });
    return { ...this.consent };
  }

  /**
   * Say no to a `consent.request` (closing the dialog is a no too).
   * @param {string} request
   */
  async refuseConsent(request) {
    await this.request({ type: 'consent.refuse', request });
  }

  /**
   * Withdraw the consent given in this room: recording of this participant stops at once;
   * with `erase`, what was recorded is erased too. Without `jti`, whatever consent is current.
   * @param {{ jti?: string, erase?: boolean }} [options]
   */
  async withdrawConsent(options = {}) {
    /** @type {Message} */
    const message = { type: 'consent.withdraw', erase: options.erase ?? false };
    if (options.jti !== undefined) message.jti = options.jti;
    await this.request(message);
    this.consent = null;
  }

  /** Re-join now if waiting to (e.g. the browser just came back online). */
  reconnectNow() {
    if (this.state !== 'reconnecting' || !this.#reconnectTimer) return;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    void this.#reconnect();
  }

  /** Drop the socket and reconnect (what a network blip does); for diagnostics and tests. */
  dropConnection() {
    this.socket?.abandon('dropped on request');
  }

  /**
   * Restart ICE on both peer connections in place (the network changed). Resolves once the new
   * offers and answers are applied; media resumes when ICE reconnects (`pcstate` events).
   * @param {string} [reason]
   * @returns {Promise<void>}
   */
  restartIce(reason = 'requested') {
    if (this.state !== 'joined' || (!this.publishPc && !this.subscribePc)) return Promise.resolve();
    this.#restarting ??= this.#runIceRestart(reason).finally(() => {
      this.#restarting = null;
    });
    return this.#restarting;
  }

  /** @param {string} reason */
  async #runIceRestart(reason) {
    this.iceRestarts += 1;
    this.#emit('icerestart', { reason });
    console.debug('oktorus: ICE restart', reason);
    if (this.#restartWatch) clearTimeout(this.#restartWatch);
    this.#restartWatch = setTimeout(() => {
      this.#restartWatch = null;
      const stuck = [this.publishPc, this.subscribePc].some(
        (pc) => pc && pc.connectionState !== 'connected',
      );
      if (stuck) this.#forceRejoin('ICE restart did not reconnect');
    }, this.options.iceRestartTimeoutMs);
    try {
      if (this.publishPc) {
        // A publish offer with new credentials; the server then re-offers the subscribe side.
        this.publishPc.restartIce();
        await this.#queuePublish();
      } else {
        await this.request({ type: 'ice.restart', pc: 'subscribe' });
      }
    } catch (error) {
      this.#forceRejoin(`ICE restart failed: ${asProtocolError(error).message}`);
    }
  }

  /** Re-join as a new participant on fresh peer connections (resumption cannot help). @param {string} reason */
  #forceRejoin(reason) {
    this.#resume = null;
    this.#forceReconnect(reason);
  }

  /** Restart ICE when the browser says its network changed. */
  #watchNetwork() {
    if (this.#unwatchNetwork || typeof window === 'undefined') return;
    const online = () => {
      if (this.state === 'reconnecting') this.reconnectNow();
      else void this.restartIce('back online');
    };
    /** @type {(EventTarget & { type?: string }) | undefined} */
    const connection = /** @type {{ connection?: EventTarget & { type?: string } }} */ (navigator).connection;
    let type = connection?.type;
    // `change` also fires for new bandwidth estimates: restart only for another network
    // type (Wi-Fi → cellular) or when a peer connection is not connected anyway.
    const changed = () => {
      const now = connection?.type;
      const moved = now !== type;
      type = now;
      const unwell = [this.publishPc, this.subscribePc].some(
        (pc) => pc && pc.connectionState !== 'connected',
      );
      if (moved || unwell) online();
    };
    window.addEventListener('online', online);
    connection?.addEventListener('change', changed);
    this.#unwatchNetwork = () => {
      window.removeEventListener('online', online);
      connection?.removeEventListener('change', changed);
    };
  }

  /** Leave the room: `leave`, then close everything. Local tracks are not stopped. */
  async leave() {
    this.#leaving = true;
    const socket = this.socket;
    if (socket && !socket.closed && this.state === 'joined') {
      try {
        socket.send({ type: 'leave' });
      } catch {
        // closing anyway
      }
    }
    this.#shutdown();
    if (socket && !socket.closed) socket.abandon('left', CLOSE_NORMAL);
    this.#setState('closed');
  }

  /** Close without `leave` (the server notices the closed socket). */
  close() {
    this.#leaving = true;
    this.#shutdown();
    this.socket?.abandon('closed', CLOSE_NORMAL);
    if (this.state !== 'closed') this.#setState('closed');
  }

  // --- joining and re-joining -----------------------------------------------------------

  /**
   * @param {boolean} rejoin
   * @returns {Promise<JoinedInfo>}
   */
  async #join(rejoin) {
    let url = this.#url;
    for (;;) {
      const socket = new SignalSocket(url, this.options.createSocket);
      this.socket = socket;
      socket.addEventListener('message', (event) => {
        if (this.socket === socket) this.#onMessage(/** @type {CustomEvent<Message>} */ (event).detail);
      });
      socket.addEventListener('close', (event) => {
        const { code, reason } = /** @type {CustomEvent<{code: number, reason: string}>} */ (event).detail;
        if (this.socket === socket) this.#onSocketClose(code, reason);
      });
      await socket.opened(this.options.requestTimeoutMs);
      /** @type {Message} */
      const join = { type: 'join', token: this.#token };
      if (rejoin && this.#resume) join.resume = this.#resume;
      const reply = await socket.request(join, this.options.requestTimeoutMs);
      if (reply.type === 'redirect' && typeof reply.url === 'string' && /^wss?:\/\//.test(reply.url)) {
        this.#redirects += 1;
        if (this.#redirects > MAX_REDIRECTS) throw new ProtocolError('unreachable', 'too many redirects');
        this.socket = null;
        socket.abandon('redirected', CLOSE_NORMAL);
        url = reply.url;
        continue;
      }
      if (reply.type !== 'joined')
        throw new ProtocolError('internal', `unexpected reply '${reply.type}' to join`);
      this.#redirects = 0;
      this.#url = url;
      return this.#onJoined(/** @type {JoinedInfo} */ (/** @type {unknown} */ (reply)), rejoin);
    }
  }

  /**
   * @param {JoinedInfo} joined
   * @param {boolean} rejoin
   * @returns {JoinedInfo}
   */
  #onJoined(joined, rejoin) {
    const resumed = rejoin && joined.resumed === true;
    // Not resumed: a new participant, so the peer connections kept for a resume go.
    if (rejoin && !resumed) this.#teardownMedia();
    this.#resume = typeof joined.resume === 'string' ? joined.resume : null;
    this.joined = joined;
    this.participants = new Map(
      (Array.isArray(joined.participants) ? joined.participants : [])
        .filter(isParticipant)
        .map((p) => [p.id, p]),
    );
    this.tracks = new Map(
      (Array.isArray(joined.tracks) ? joined.tracks : []).filter(isTrack).map((t) => [t.id, t]),
    );
    this.#attempt = 0;
    this.#droppedAt = null;
    this.recording = recordingStateOf(joined.recording);
    // A re-joined participant is a new one: asked again if still wanted. A resumed one keeps it.
    if (!resumed) this.consent = null;
    this.#setState('joined');
    this.#startPing();
    this.#watchNetwork();
    this.#emit('joined', { joined, rejoin, resumed });
    this.#emit('recording.state', this.recording);
    return joined;
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #onSocketClose(code, reason) {
    this.socket = null;
    this.#stopPing();
    if (this.#leaving || this.state === 'closed' || this.state === 'connecting') return;
    // The peer connections stay up for a resume (media keeps flowing); a fresh join drops them.
    if (!this.#resume) this.#teardownMedia();
    const error = new ProtocolError(
      code === CLOSE_UNAUTHENTICATED
        ? 'unauthenticated'
        : code === CLOSE_RATE_LIMITED
          ? 'rate_limited'
          : 'closed',
      reason || `the signalling connection closed (${code})`,
    );
    if (!this.options.reconnect || TERMINAL_CLOSE_CODES.has(code)) {
      this.#shutdown();
      this.#setState('closed', { error });
      return;
    }
    this.#droppedAt ??= Date.now();
    this.#scheduleReconnect(error);
  }

  /** @param {ProtocolError} error */
  #scheduleReconnect(error) {
    if (this.#reconnectTimer) return;
    const elapsed = Date.now() - (this.#droppedAt ?? Date.now());
    if (elapsed > this.options.giveUpAfterMs) {
      this.#shutdown();
      this.#setState('closed', {
        error: new ProtocolError('unreachable', `gave up re-joining: ${error.message}`),
      });
      return;
    }
    const base = Math.min(
      this.options.maxReconnectDelayMs,
      this.options.reconnectDelayMs * 2 ** this.#attempt,
    );
    const delayMs = Math.round(base * (0.75 + Math.random() * 0.5));
    this.#attempt += 1;
    this.#setState('reconnecting', { error, attempt: this.#attempt, delayMs });
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      void this.#reconnect();
    }, delayMs);
  }

  async #reconnect() {
    if (this.#leaving || this.state !== 'reconnecting') return;
    try {
      const joined = await this.#join(true);
      if (joined.resumed === true) {
        // Same participant: tracks and subscriptions are kept. If the network changed too,
        // the peer connections need new ICE paths.
        const broken = [this.publishPc, this.subscribePc].some(
          (pc) => pc && pc.connectionState !== 'connected' && pc.connectionState !== 'connecting',
        );
        if (broken) await this.restartIce('resumed on a new path');
        return;
      }
    } catch (error) {
      const failure = asProtocolError(error);
      if (this.#leaving) return;
      if (TERMINAL_ERROR_CODES.has(failure.code)) {
        this.#shutdown();
        this.#setState('closed', { error: failure });
        return;
      }
      const socket = this.socket;
      this.socket = null;
      socket?.abandon('re-join failed');
      // The node a redirect led to may be gone: the next try goes through the entry URL,
      // which redirects to wherever the room lives now (another node takes it over).
      this.#url = this.#entryUrl;
      this.#scheduleReconnect(failure);
      return;
    }
    if (this.#local.some((slot) => slot.track)) {
      try {
        await this.#queuePublish();
      } catch (error) {
        this.#emit('error', { error: asProtocolError(error) });
      }
    }
  }

  /** Give up the socket and re-join (ICE failure, no pong). @param {string} reason */
  #forceReconnect(reason) {
    if (this.state !== 'joined' || !this.socket) return;
    this.socket.abandon(reason);
  }

  #startPing() {
    this.#stopPing();
    this.#pingTimer = setInterval(() => {
      const socket = this.socket;
      if (!socket || this.state !== 'joined') return;
      socket.request({ type: 'ping' }, this.options.pingIntervalMs).catch((error) => {
        if (this.socket === socket && asProtocolError(error).code === 'timeout') socket.abandon('no pong');
      });
    }, this.options.pingIntervalMs);
  }

  #stopPing() {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingTimer = null;
  }

  /** Close both peer connections and forget remote tracks (before a re-join or for good). */
  #teardownMedia() {
    if (this.#stallTimer) clearInterval(this.#stallTimer);
    this.#stallTimer = null;
    if (this.#restartWatch) clearTimeout(this.#restartWatch);
    this.#restartWatch = null;
    this.#videoProgress.clear();
    for (const [mid, trackId] of this.#midTracks) this.#emit('remotetrackended', { trackId, mid });
    this.#midTracks.clear();
    this.remoteTracks.clear();
    for (const name of /** @type {PcName[]} */ (['publish', 'subscribe'])) {
      const timer = this.#iceTimers[name];
      if (timer) clearTimeout(timer);
      this.#iceTimers[name] = null;
      this.#held[name] = [];
      this.#canTrickle[name] = false;
    }
    this.publishPc?.close();
    this.subscribePc?.close();
    this.publishPc = null;
    this.subscribePc = null;
    this.#senders.clear();
    this.#publishedIds.clear();
    this.#publishChain = Promise.resolve();
    this.#subscribeChain = Promise.resolve();
  }

  #shutdown() {
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#unwatchNetwork?.();
    this.#unwatchNetwork = null;
    this.#resume = null;
    this.#stopPing();
    this.#teardownMedia();
  }

  // --- incoming messages --------------------------------------------------------------

  /** @param {Message} message */
  #onMessage(message) {
    switch (message.type) {
      case 'offer':
        this.#queueOffer(message);
        return;
      case 'candidate':
        this.#onRemoteCandidate(message);
        return;
      case 'participant.joined':
      case 'participant.left': {
        const participant = message.participant;
        if (!isParticipant(participant)) return;
        if (message.type === 'participant.joined') {
          if (participant.id !== this.participant?.id) this.participants.set(participant.id, participant);
        } else {
          this.participants.delete(participant.id);
        }
        this.#emit(message.type, { participant });
        return;
      }
      case 'track.published':
      case 'track.updated':
      case 'track.unpublished': {
        const track = message.track;
        if (!isTrack(track)) return;
        if (message.type === 'track.unpublished') this.tracks.delete(track.id);
        else this.tracks.set(track.id, track);
        this.#emit(message.type, { track });
        return;
      }
      case 'speaker.changed':
        if (Array.isArray(message.speakers)) {
          this.#emit('speaker.changed', { speakers: message.speakers.filter((s) => typeof s === 'string') });
        }
        return;
      case 'recording.state':
        this.recording = recordingStateOf(message);
        this.#emit('recording.state', this.recording);
        return;
      case 'consent.request': {
        const { request, notice, by, purpose } = message;
        if (typeof request !== 'string' || typeof notice !== 'string') return;
        this.#emit('consent.request', {
          request,
          notice,
          scope: kinds(message.scope),
          by: typeof by === 'string' ? by : '',
          purpose: typeof purpose === 'string' ? purpose : '',
        });
        return;
      }
      case 'consent.granted':
        // Unsolicited: a renewal while recording (the reply to `consent.grant` is matched to
        // its request instead).
        if (typeof message.token === 'string' && typeof message.jti === 'string') {
          this.consent = { token: message.token, jti: message.jti };
          this.#emit('consent.granted', { token: message.token, jti: message.jti, renewed: true });
        }
        return;
      case 'server.draining': {
        // The call goes on until the server closes the socket (1001 at the deadline); then the
        // usual re-join finds another node behind the same URL. Leaving earlier would only
        // cut a working call short when this is the only node.
        const deadline = typeof message.deadline === 'number' ? message.deadline : 0;
        this.#emit('server.draining', { deadline });
        return;
      }
      case 'error': {
        const error = new ProtocolError(
          String(message.code ?? 'internal'),
          String(message.message ?? 'error'),
        );
        if (typeof message.id === 'string' && message.id.startsWith('c')) {
          console.debug('oktorus: candidate refused', error.message);
          return;
        }
        this.#emit('error', { error });
        return;
      }
      default:
        return; // the server may add message types; ignore what we do not know
    }
  }

  // --- peer connections ------------------------------------------------------------------

  /**
   * @param {PcName} name
   * @returns {RTCPeerConnection}
   */
  #newPc(name) {
    const pc = new RTCPeerConnection({
      iceServers: this.joined?.ice_servers ?? [],
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    });
    pc.addEventListener('icecandidate', (event) => {
      const candidate =
        event.candidate && event.candidate.candidate
          ? {
              candidate: event.candidate.candidate,
              sdpMid: event.candidate.sdpMid,
              sdpMLineIndex: event.candidate.sdpMLineIndex,
            }
          : null;
      if (this.#canTrickle[name]) this.#sendCandidate(name, candidate);
      else this.#held[name].push(candidate);
    });
    pc.addEventListener('connectionstatechange', () => {
      const current = name === 'publish' ? this.publishPc : this.subscribePc;
      if (current !== pc) return;
      this.#emit('pcstate', { pc: name, state: pc.connectionState });
      if (name === 'subscribe' && pc.connectionState === 'connected') this.#watchStalls();
      const timer = this.#iceTimers[name];
      if (timer) clearTimeout(timer);
      this.#iceTimers[name] = null;
      if (pc.connectionState === 'connected') {
        const other = name === 'publish' ? this.subscribePc : this.publishPc;
        if (this.#restartWatch && (!other || other.connectionState === 'connected')) {
          clearTimeout(this.#restartWatch);
          this.#restartWatch = null;
        }
      } else if (pc.connectionState === 'failed') {
        void this.restartIce(`${name} ICE failed`);
      } else if (pc.connectionState === 'disconnected') {
        this.#iceTimers[name] = setTimeout(
          () => void this.restartIce(`${name} ICE disconnected`),
          this.options.iceDisconnectedMs,
        );
      }
    });
    return pc;
  }

  /**
   * @param {PcName} name
   * @param {RTCIceCandidateInit | null} candidate
   */
  #sendCandidate(name, candidate) {
    const socket = this.socket;
    if (!socket || socket.closed) return;
    try {
      socket.send({ type: 'candidate', id: socket.nextId('c'), pc: name, candidate });
    } catch {
      // the socket just closed: a re-join starts over
    }
  }

  /** @param {PcName} name */
  #allowTrickle(name) {
    this.#canTrickle[name] = true;
    const held = this.#held[name];
    this.#held[name] = [];
    for (const candidate of held) this.#sendCandidate(name, candidate);
  }

  /** @returns {Promise<TrackInfo[]>} */
  #queuePublish() {
    const run = this.#publishChain.then(() => this.#negotiatePublish());
    this.#publishChain = run.catch(() => undefined);
    return run;
  }

  /** @returns {Promise<TrackInfo[]>} */
  async #negotiatePublish() {
    const socket = this.socket;
    if (!socket || this.state !== 'joined') return [];
    const pc = (this.publishPc ??= this.#newPc('publish'));
    const stream = this.#localStream ?? new MediaStream();
    for (const [track, transceiver] of [...this.#senders]) {
      if (!this.#local.some((slot) => slot.track === track)) {
        this.#senders.delete(track);
        this.#publishedIds.delete(track);
        transceiver.direction = 'inactive';
        await transceiver.sender.replaceTrack(null);
      }
    }
    /** @type {Array<RTCRtpTransceiver | undefined>} */
    const transceivers = [];
    for (const slot of this.#local) {
      const track = slot.track;
      let transceiver = track ? this.#senders.get(track) : undefined;
      if (track && !transceiver) {
        // Reuse an m-line we stopped sending on, so the SDP does not grow forever.
        const used = new Set(this.#senders.values());
        transceiver = pc
          .getTransceivers()
          .find((t) => t.receiver.track.kind === track.kind && t.direction === 'inactive' && !used.has(t));
        if (transceiver) {
          await transceiver.sender.replaceTrack(track);
          transceiver.direction = 'sendonly';
        } else {
          transceiver = pc.addTransceiver(track, {
            direction: 'sendonly',
            streams: [stream],
            ...(track.kind === 'video' && this.options.simulcast ? { sendEncodings: SIMULCAST_ENCODINGS } : {}),
          });
        }
        this.#senders.set(track, transceiver);
      }
      transceivers.push(transceiver);
    }
    if (pc.getTransceivers().length === 0) return [];
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const sdp = pc.localDescription?.sdp ?? offer.sdp ?? '';
    /** @type {Message} */
    const publish = { type: 'publish', sdp };
    /** @type {Record<string, TrackSource>} */
    const sources = {};
    this.#local.forEach((slot, i) => {
      const mid = transceivers[i]?.mid;
      if (slot.source && slot.track && mid) sources[mid] = slot.source;
    });
    if (Object.keys(sources).length) publish.sources = sources;
    // Nothing may be awaited between the offer and sending it: candidates it gathers
    // must reach the server after it (an ICE restart would discard earlier ones).
    const pendingReply = socket.request(publish, this.options.requestTimeoutMs);
    this.#allowTrickle('publish');
    if (Object.keys(sources).length) await this.#favourResolution(transceivers);
    const reply = await pendingReply;
    if (this.publishPc !== pc) return []; // torn down meanwhile (re-join)
    if (typeof reply.sdp !== 'string') throw new ProtocolError('internal', "'published' without sdp");
    await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
    const tracks = (Array.isArray(reply.tracks) ? reply.tracks : []).filter(isTrack);
    this.#mapPublished(transceivers, tracks, sdp);
    for (const track of tracks) this.tracks.set(track.id, track);
    await this.#restoreMutes(tracks);
    this.#emit('published', { tracks });
    return tracks;
  }

  /**
   * Screen content: when bandwidth is short, keep the resolution and drop frames.
   * @param {Array<RTCRtpTransceiver | undefined>} transceivers (in `#local` order)
   */
  async #favourResolution(transceivers) {
    for (const [i, slot] of this.#local.entries()) {
      const sender = transceivers[i]?.sender;
      if (slot.source !== 'screen' || !slot.track || !sender) continue;
      try {
        const parameters = sender.getParameters();
        parameters.degradationPreference = 'maintain-resolution';
        await sender.setParameters(parameters);
      } catch {
        // not supported here (older browsers): the contentHint still says "detail"
      }
    }
  }

  /**
   * Which server track each local track became: by `mid` when the server says, else in
   * m-line order per kind (the order of `published.tracks`).
   * @param {Array<RTCRtpTransceiver | undefined>} transceivers
   * @param {TrackInfo[]} tracks
   * @param {string} sdp our offer (its m-line order)
   */
  #mapPublished(transceivers, tracks, sdp) {
    const order = [...sdp.matchAll(/^a=mid:(\S+)/gm)].map((m) => m[1]);
    /** @param {RTCRtpTransceiver | undefined} t */
    const index = (t) => {
      const i = t?.mid ? order.indexOf(t.mid) : -1;
      return i < 0 ? Number.MAX_SAFE_INTEGER : i;
    };
    /** @type {Record<string, TrackInfo[]>} */
    const byKind = { audio: [], video: [] };
    for (const track of tracks) byKind[track.kind]?.push(track);
    const sending = this.#local
      .map((slot, i) => ({ track: slot.track, transceiver: transceivers[i] }))
      .filter((s) => s.track && s.transceiver)
      .sort((a, b) => index(a.transceiver) - index(b.transceiver));
    for (const { track, transceiver } of sending) {
      if (!track || !transceiver) continue;
      const byMid = tracks.find((t) => t.mid !== undefined && t.mid === transceiver.mid);
      const info = byMid ?? byKind[track.kind]?.shift();
      if (info) this.#publishedIds.set(track, info.id);
    }
  }

  /** After (re-)publishing, tell the server which tracks are muted. @param {TrackInfo[]} tracks */
  async #restoreMutes(tracks) {
    for (const [track, muted] of this.#muted) {
      const id = this.#publishedIds.get(track);
      const info = tracks.find((t) => t.id === id);
      if (id && info && info.muted !== muted) await this.request({ type: 'mute', track: id, muted });
    }
  }

  /** @param {Message} message */
  #queueOffer(message) {
    this.#subscribeChain = this.#subscribeChain
      .then(() => this.#answerOffer(message))
      .catch((error) => {
        this.#emit('error', {
          error: new ProtocolError('negotiation_failed', `subscribe: ${asProtocolError(error).message}`),
        });
        this.#forceReconnect('subscribe negotiation failed');
      });
  }

  /** @param {Message} message */
  async #answerOffer(message) {
    const socket = this.socket;
    if (typeof message.sdp !== 'string' || !socket) return;
    const pc = (this.subscribePc ??= this.#newPc('subscribe'));
    await pc.setRemoteDescription({ type: 'offer', sdp: message.sdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (this.subscribePc !== pc || this.socket !== socket) return;
    socket.send({ type: 'answer', sdp: pc.localDescription?.sdp ?? answer.sdp ?? '' });
    this.#allowTrickle('subscribe');
    /** @type {Record<string, string>} */
    const tracks = isObject(message.tracks)
      ? Object.fromEntries(
          Object.entries(message.tracks)
            .filter((e) => typeof e[1] === 'string')
            .map(([m, t]) => [m, String(t)]),
        )
      : tracksFromSdp(message.sdp);
    this.#updateRemoteTracks(pc, tracks);
  }

  /**
   * Emit `remotetrackended` / `remotetrack` for every subscribe m-line whose track changed.
   * An m-line may carry a new track after its old one ended (the server reuses m-lines).
   * @param {RTCPeerConnection} pc
   * @param {Record<string, string>} tracks
   */
  #updateRemoteTracks(pc, tracks) {
    for (const [mid, trackId] of [...this.#midTracks]) {
      if (tracks[mid] !== trackId) {
        this.#midTracks.delete(mid);
        this.remoteTracks.delete(trackId);
        this.#emit('remotetrackended', { trackId, mid });
      }
    }
    for (const transceiver of pc.getTransceivers()) {
      const mid = transceiver.mid;
      const trackId = mid === null ? undefined : tracks[mid];
      if (mid === null || trackId === undefined || this.#midTracks.get(mid) === trackId) continue;
      this.#midTracks.set(mid, trackId);
      const mediaTrack = transceiver.receiver.track;
      this.remoteTracks.set(trackId, mediaTrack);
      this.#emit('remotetrack', { trackId, mid, mediaTrack, info: this.tracks.get(trackId) });
    }
  }

  /** Start the remote video stall watchdog (once per subscribe PC). */
  #watchStalls() {
    const period = this.options.videoStallMs;
    if (this.#stallTimer || period <= 0) return;
    this.#stallTimer = setInterval(() => void this.#checkStalls().catch(() => undefined), period / 3);
  }

  /**
   * Nudge remote videos that stopped decoding although they should play: pausing and resuming
   * makes the server wait for (and ask the publisher for) a fresh keyframe. This recovers from a
   * keyframe lost on the way (e.g. asked for before the publisher's connection was up).
   */
  async #checkStalls() {
    const pc = this.subscribePc;
    if (!pc || pc.connectionState !== 'connected' || this.state !== 'joined') return;
    /** @type {Map<string, number>} mid → frames decoded */
    const decoded = new Map();
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && typeof s.mid === 'string') {
        decoded.set(s.mid, s.framesDecoded ?? 0);
      }
    });
    const now = Date.now();
    for (const [mid, trackId] of this.#midTracks) {
      const info = this.tracks.get(trackId);
      const progress = this.#videoProgress.get(trackId);
      const frames = decoded.get(mid) ?? 0;
      if (!info || info.kind !== 'video' || info.muted || this.#pausedByUser.has(trackId)) {
        this.#videoProgress.delete(trackId); // the clock starts again when it should play
        continue;
      }
      if (!progress || frames > progress.frames) {
        this.#videoProgress.set(trackId, { frames, since: now, nudges: progress?.nudges ?? 0 });
        continue;
      }
      if (now - progress.since < this.options.videoStallMs || progress.nudges >= 5) continue;
      progress.since = now;
      progress.nudges += 1;
      this.stallNudges += 1;
      console.debug('oktorus: remote video stalled, asking for a keyframe', trackId);
      await this.request({ type: 'track.settings', track: trackId, paused: true });
      await this.request({ type: 'track.settings', track: trackId, paused: false });
    }
  }

  /** @param {Message} message */
  #onRemoteCandidate(message) {
    const pc =
      message.pc === 'publish' ? this.publishPc : message.pc === 'subscribe' ? this.subscribePc : null;
    const candidate = message.candidate;
    if (!pc) return;
    if (candidate === null) {
      pc.addIceCandidate(null).catch(() => undefined);
    } else if (isObject(candidate) && typeof candidate.candidate === 'string') {
      pc.addIceCandidate(/** @type {RTCIceCandidateInit} */ (candidate)).catch(() => undefined);
    }
  }
}

/**
 * @param {unknown} error
 * @returns {ProtocolError}
 */
function asProtocolError(error) {
  if (error instanceof ProtocolError) return error;
  if (error instanceof Error) return new ProtocolError('internal', error.message);
  return new ProtocolError('internal', String(error));
}
