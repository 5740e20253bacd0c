// @ts-check
/**
 * @file The call UI shared by the customer page and the agent console: a pre-join screen
 * (preview, device pickers, mute before joining), the participant grid, the call controls,
 * and every message a person needs (blocked camera, no device, expired link, lost connection).
 *
 * Tests and diagnostics find the live objects on `window.__oktorus` (`connection`, `signal`
 * — the SignalSocket, whose `ws` is the WebSocket —, `publishPc`, `subscribePc`, `metrics`).
 */

import { acquire, deviceIdOf, listDevices, stopStream } from './media.js';
import { h, show } from './dom.js';
import { ProtocolError, SfuConnection, peekTokenClaims, signalUrl } from './protocol.js';
import { ConsentDialog, RecordingBar, describeScope } from './recording-ui.js';
import { ScreenShare } from './screen-share.js';
import { Grid } from './tiles.js';

/**
 * @typedef {object} Person
 * @property {string} id
 * @property {string} identity
 * @property {string} role
 * @property {boolean} self
 */

/**
 * @typedef {'prejoin' | 'joining' | 'incall' | 'left' | 'failed'} Phase
 */

/**
 * @typedef {object} CallViewOptions
 * @property {string} token access token for the room
 * @property {string} [signalUrl] defaults to this page's server
 * @property {string} [joinLabel] text of the join button
 * @property {(people: Person[]) => void} [onPeople] who is in the call, whenever that changes
 * @property {(phase: Phase) => void} [onPhase]
 * @property {2 | 3} [headingLevel] level of the view's headings (default 2)
 * @property {(connection: SfuConnection | null) => void} [onConnection] the connection of this
 *   view when it joins (null when it leaves), e.g. for the console's recording controls
 * @property {number} [drainMoveDelayMs] after `server.draining`, wait this long before moving
 *   the call (default 2000)
 */

/**
 * Words for a refusal or failure, and whether trying again can help.
 * @param {ProtocolError} error
 * @returns {{ message: string, retry: boolean }}
 */
export function explain(error) {
  const text = error.message.toLowerCase();
  switch (error.code) {
    case 'unauthenticated':
      if (text.includes('expired'))
        return { message: 'This link has expired. Ask for a new invite link.', retry: false };
      if (text.includes('shutting down'))
        return { message: 'The call server is restarting. Try again in a moment.', retry: true };
      return {
        message: 'This link is not valid: it may be incomplete or mistyped. Ask for a new invite link.',
        retry: false,
      };
    case 'forbidden':
      if (text.includes('full'))
        return { message: 'This call is full. Try again later or ask the agent for help.', retry: true };
      return { message: 'You are not allowed to join this call with this link.', retry: false };
    case 'conflict':
      if (text.includes('draining'))
        return { message: 'The call server is restarting. Try again in a moment.', retry: true };
      return { message: `Something went wrong (${error.code}: ${error.message}).`, retry: true };
    case 'not_found':
      return { message: 'This call has ended or no longer exists.', retry: false };
    case 'rate_limited':
      return { message: 'Too many attempts in a short time. Wait a minute, then try again.', retry: true };
    case 'unreachable':
    case 'timeout':
    case 'closed':
      return {
        message: 'Cannot reach the call server. Check your internet connection, then try again.',
        retry: true,
      };
    default:
      return { message: `Something went wrong (${error.code}: ${error.message}).`, retry: true };
  }
}

export class CallView {
  /** @type {SfuConnection | null} */
  connection = null;
  /** @type {MediaStream | null} */
  stream = null;
  /** @type {Phase} */
  phase = 'prejoin';
  /** performance.now() of each step of the last join (for tests and diagnostics). */
  metrics = {
    joinClickedAt: 0,
    joinedAt: 0,
    subscribeConnectedAt: 0,
    firstRemoteTrackAt: 0,
    firstRemoteFrameAt: 0,
  };
  #wantAudio = true;
  #wantVideo = true;
  /** @type {Array<() => void>} */
  #unsubscribe = [];
  /** @type {ReturnType<typeof setTimeout> | null} */
  #statusTimer = null;
  /** What "Try again" does for the alert now shown. @type {'media' | 'join' | 'start' | null} */
  #retryAction = null;
  /** The camera/microphone request in flight, if any (joining waits for it). @type {Promise<void>} */
  #acquiring = Promise.resolve();
  /** @type {ReturnType<typeof setTimeout> | null} */
  #drainTimer = null;

  /**
   * @param {HTMLElement} root where the view is built
   * @param {CallViewOptions} options
   */
  constructor(root, options) {
    this.root = root;
    this.options = options;
    const claims = peekTokenClaims(options.token);
    const hx = options.headingLevel === 3 ? 'h3' : 'h2';
    this.name = claims?.sub ?? 'You';
    this.expiresAt = typeof claims?.exp === 'number' ? claims.exp * 1000 : null;
    /** Whether the token lets us send media (a view-only token just watches). */
    this.canPublish = !Array.isArray(claims?.grants) || claims.grants.includes('publish');

    // Always rendered (an empty live region takes no space): hidden regions are not announced.
    this.status = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
    this.alertText = h('p', { class: 'alert-text' });
    this.retryButton = h('button', { type: 'button', class: 'secondary', text: 'Try again' });
    this.withoutButton = h('button', {
      type: 'button',
      class: 'secondary',
      text: 'Join without camera and microphone',
    });
    this.alert = h(
      'div',
      { class: 'alert', role: 'alert' },
      this.alertText,
      h('div', { class: 'row' }, this.retryButton, this.withoutButton),
    );

    this.preview = h('video', {
      class: 'mirror',
      autoplay: true,
      playsinline: true,
      muted: true,
      'aria-label': 'Your camera preview',
    });
    this.preview.muted = true;
    this.previewOff = h('p', { class: 'preview-off', text: 'Camera off' });
    this.cameraSelect = h('select', { id: 'camera-select' });
    this.micSelect = h('select', { id: 'mic-select' });
    this.preCam = h('button', { type: 'button', class: 'secondary' });
    this.preMic = h('button', { type: 'button', class: 'secondary' });
    this.joinButton = h('button', {
      type: 'button',
      class: 'primary',
      text: options.joinLabel ?? 'Join call',
    });
    this.prejoin = h(
      'section',
      { class: 'prejoin', 'aria-labelledby': 'prejoin-title' },
      h(hx, { id: 'prejoin-title', text: 'Check your camera and microphone' }),
      h(
        'div',
        { class: 'prejoin-body' },
        h('div', { class: 'preview' }, this.preview, this.previewOff),
        h(
          'div',
          { class: 'prejoin-form' },
          h('p', { class: 'who' }, 'Joining as ', h('strong', { text: this.name })),
          h('label', { for: 'camera-select', text: 'Camera' }),
          this.cameraSelect,
          h('label', { for: 'mic-select', text: 'Microphone' }),
          this.micSelect,
          h('div', { class: 'row' }, this.preCam, this.preMic),
          this.joinButton,
        ),
      ),
    );

    this.recordingBar = new RecordingBar((erase) => void this.#withdraw(erase));
    this.consentDialog = new ConsentDialog((request, accepted) => void this.#answer(request, accepted));
    this.gridList = h('ul', { class: 'grid', 'aria-label': 'Participants' });
    this.grid = new Grid(this.gridList);
    this.micButton = h('button', { type: 'button', class: 'control' });
    this.camButton = h('button', { type: 'button', class: 'control' });
    this.leaveButton = h('button', { type: 'button', class: 'control danger', text: 'Leave call' });
    this.soundButton = h('button', { type: 'button', class: 'control', text: 'Turn on sound', hidden: true });
    this.screenShare = new ScreenShare((text, warn) => this.#setStatus(text, { warn: warn ?? false }));
    this.incallTitle = h(hx, {
      id: 'incall-title',
      class: 'visually-hidden',
      tabindex: '-1',
      text: 'In the call',
    });
    this.incall = h(
      'section',
      { class: 'incall', 'aria-labelledby': 'incall-title' },
      this.incallTitle,
      this.recordingBar.element,
      this.gridList,
      h(
        'div',
        { class: 'controls', role: 'group', 'aria-label': 'Call controls' },
        this.micButton,
        this.camButton,
        this.screenShare.button,
        this.soundButton,
        this.leaveButton,
      ),
    );

    this.rejoinButton = h('button', { type: 'button', class: 'primary', text: 'Rejoin the call' });
    this.leftTitle = h(hx, { tabindex: '-1', text: 'You left the call' });
    this.left = h(
      'section',
      { class: 'left' },
      this.leftTitle,
      h('p', { text: 'Your camera and microphone are off.' }),
      this.rejoinButton,
    );

    root.replaceChildren(
      this.status,
      this.alert,
      this.prejoin,
      this.incall,
      this.left,
      this.consentDialog.element,
    );
    this.cameraSelect.disabled = true;
    this.micSelect.disabled = true;
    this.#renderToggles();
    this.#wire();
    this.#setPhase('prejoin');
    this.#hideAlert();
    this.#exposeForTests();
  }

  // --- wiring -------------------------------------------------------------------------

  #wire() {
    this.joinButton.addEventListener('click', () => void this.join());
    this.retryButton.addEventListener('click', () => void this.#retry());
    this.withoutButton.addEventListener('click', () => {
      this.#wantAudio = false;
      this.#wantVideo = false;
      void this.join();
    });
    this.cameraSelect.addEventListener('change', () => void this.#changeDevice('video'));
    this.micSelect.addEventListener('change', () => void this.#changeDevice('audio'));
    this.preCam.addEventListener('click', () => void this.toggle('video'));
    this.preMic.addEventListener('click', () => void this.toggle('audio'));
    this.camButton.addEventListener('click', () => void this.toggle('video'));
    this.micButton.addEventListener('click', () => void this.toggle('audio'));
    this.leaveButton.addEventListener('click', () => void this.leave());
    this.rejoinButton.addEventListener('click', () => void this.start());
    this.soundButton.addEventListener('click', () => {
      for (const tile of this.grid.tiles.values()) void tile.audio.play().catch(() => undefined);
      show(this.soundButton, false);
    });
    window.addEventListener('online', () => {
      this.#setStatus('Back online. Reconnecting…');
      this.connection?.reconnectNow();
    });
    window.addEventListener('offline', () => {
      if (this.phase === 'incall')
        this.#setStatus('You are offline. The call resumes when your connection is back.', {
          sticky: true,
          warn: true,
        });
    });
  }

  #exposeForTests() {
    const view = this;
    Object.defineProperty(window, '__oktorus', {
      configurable: true,
      value: {
        view,
        get connection() {
          return view.connection;
        },
        get signal() {
          return view.connection?.socket ?? null;
        },
        get publishPc() {
          return view.connection?.publishPc ?? null;
        },
        get subscribePc() {
          return view.connection?.subscribePc ?? null;
        },
        metrics: view.metrics,
      },
    });
  }

  /** @param {Phase} phase */
  #setPhase(phase) {
    this.phase = phase;
    this.root.dataset.phase = phase;
    show(this.prejoin, phase === 'prejoin' || phase === 'joining');
    show(this.incall, phase === 'incall');
    show(this.left, phase === 'left');
    this.joinButton.disabled = phase === 'joining';
    this.joinButton.textContent = phase === 'joining' ? 'Joining…' : (this.options.joinLabel ?? 'Join call');
    this.options.onPhase?.(phase);
  }

  /**
   * @param {string} text
   * @param {{ sticky?: boolean, warn?: boolean }} [how]
   */
  #setStatus(text, how = {}) {
    if (this.#statusTimer) clearTimeout(this.#statusTimer);
    this.#statusTimer = null;
    this.status.textContent = text;
    this.status.classList.toggle('warn', how.warn ?? false);
    if (text && !how.sticky) this.#statusTimer = setTimeout(() => this.#setStatus(''), 4000);
  }

  /**
   * Show a problem; "Try again" repeats what failed (`media`: ask for the camera again,
   * `join`: join again, `start`: start over from the link).
   * @param {string} message
   * @param {{ retry?: 'media' | 'join' | 'start', without?: boolean }} [actions]
   */
  #showAlert(message, actions = {}) {
    this.#retryAction = actions.retry ?? null;
    this.alertText.textContent = message;
    show(this.retryButton, this.#retryAction !== null);
    show(this.withoutButton, actions.without ?? false);
    show(this.alert, true);
  }

  #hideAlert() {
    show(this.alert, false);
  }

  // --- pre-join -----------------------------------------------------------------------

  /** Check the link, then start the camera and microphone preview. */
  async start() {
    this.#hideAlert();
    this.#setPhase('prejoin');
    if (this.expiresAt !== null && this.expiresAt <= Date.now()) {
      this.#fail('This link has expired. Ask for a new invite link.', false);
      return;
    }
    this.#wantAudio = this.canPublish;
    this.#wantVideo = this.canPublish;
    this.#acquiring = this.#acquire({ audio: this.canPublish, video: this.canPublish });
    await this.#acquiring;
  }

  async #retry() {
    const action = this.#retryAction;
    this.#hideAlert();
    if (action === 'join') await this.join();
    else await this.start();
  }

  /**
   * @param {{ audio: boolean, video: boolean, audioDeviceId?: string, videoDeviceId?: string }} choice
   */
  async #acquire(choice) {
    stopStream(this.stream);
    const { stream, problem } = await acquire(choice);
    this.stream = stream;
    this.preview.srcObject = stream;
    if (problem) {
      this.#showAlert(problem.message, {
        ...(problem.retry ? { retry: /** @type {const} */ ('media') } : {}),
        without: stream.getTracks().length === 0,
      });
    } else {
      this.#hideAlert();
    }
    await this.#fillDevices();
    this.#renderToggles();
  }

  async #fillDevices() {
    const { cameras, microphones } = await listDevices();
    const stream = this.stream;
    /**
     * @param {HTMLSelectElement} select
     * @param {MediaDeviceInfo[]} devices
     * @param {string | undefined} current
     * @param {string} none
     */
    const fill = (select, devices, current, none) => {
      select.replaceChildren(
        ...(devices.length
          ? devices.map((d, i) =>
              h('option', {
                value: d.deviceId,
                text: d.label || `Device ${i + 1}`,
                selected: d.deviceId === current,
              }),
            )
          : [h('option', { value: '', text: none })]),
      );
      select.disabled = devices.length === 0;
    };
    fill(this.cameraSelect, cameras, deviceIdOf(stream?.getVideoTracks()[0]), 'No camera found');
    fill(this.micSelect, microphones, deviceIdOf(stream?.getAudioTracks()[0]), 'No microphone found');
  }

  /** @param {'audio' | 'video'} kind */
  async #changeDevice(kind) {
    const select = kind === 'video' ? this.cameraSelect : this.micSelect;
    const old = kind === 'video' ? this.stream?.getVideoTracks()[0] : this.stream?.getAudioTracks()[0];
    const { stream, problem } = await acquire({
      audio: kind === 'audio',
      video: kind === 'video',
      ...(kind === 'video' ? { videoDeviceId: select.value } : { audioDeviceId: select.value }),
    });
    const fresh = stream.getTracks()[0];
    if (problem || !fresh) {
      this.#showAlert(problem?.message ?? 'That device could not be started.');
      return;
    }
    fresh.enabled = old ? old.enabled : true;
    const current = this.stream ?? new MediaStream();
    if (old) {
      current.removeTrack(old);
      if (this.connection) await this.connection.replaceTrack(old, fresh);
      old.stop();
    }
    current.addTrack(fresh);
    this.stream = current;
    this.preview.srcObject = current;
    this.#hideAlert();
    this.#renderToggles();
  }

  // --- joining ------------------------------------------------------------------------

  /** Join the call with whatever camera/microphone the preview has. */
  async join() {
    if (this.phase === 'joining' || this.phase === 'incall') return;
    Object.assign(this.metrics, {
      joinedAt: 0,
      subscribeConnectedAt: 0,
      firstRemoteTrackAt: 0,
      firstRemoteFrameAt: 0,
    });
    this.metrics.joinClickedAt = performance.now();
    this.#hideAlert();
    this.#setPhase('joining');
    await this.#acquiring.catch(() => undefined);
    if (!this.#wantAudio && !this.#wantVideo) {
      stopStream(this.stream);
      this.stream = new MediaStream();
    }
    const connection = new SfuConnection(this.options.signalUrl ?? signalUrl(location), this.options.token);
    this.connection = connection;
    this.#listen(connection);
    this.options.onConnection?.(connection);
    try {
      await connection.connect();
    } catch (error) {
      if (this.connection !== connection) return;
      this.#closeConnection();
      const { message, retry } = explain(
        error instanceof ProtocolError ? error : new ProtocolError('internal', String(error)),
      );
      if (retry) {
        this.#setPhase('prejoin');
        this.#showAlert(message, { retry: 'join' });
      } else {
        this.#fail(message, false);
      }
      return;
    }
    this.metrics.joinedAt = performance.now();
    if (this.canPublish) this.screenShare.attach(connection);
    this.#enterCall();
    const stream = this.stream ?? new MediaStream();
    for (const track of stream.getTracks()) {
      if (!track.enabled) await connection.setMuted(track, true);
    }
    if (!stream.getTracks().length || !this.canPublish) return;
    try {
      await connection.publish(stream.getTracks(), stream);
    } catch (error) {
      // Still in the call, receiving: say why the others cannot see or hear us.
      const reason = error instanceof Error ? error.message : String(error);
      if (this.connection === connection)
        this.#setStatus(`Your camera and microphone could not be sent (${reason}).`, {
          sticky: true,
          warn: true,
        });
    }
  }

  /**
   * @param {string} message
   * @param {boolean} retry
   */
  #fail(message, retry) {
    stopStream(this.stream);
    this.stream = null;
    this.#setPhase('failed');
    this.#showAlert(message, retry ? { retry: 'start' } : {});
  }

  #enterCall() {
    const connection = this.connection;
    if (!connection) return;
    this.#setPhase('incall');
    this.grid.clearRemote();
    const self = this.grid.ensure('self', this.name, true);
    const stream = this.stream ?? new MediaStream();
    const video = stream.getVideoTracks()[0];
    self.setVideo(video ?? null, null);
    self.setMuted('video', video ? !video.enabled : null);
    const audio = stream.getAudioTracks()[0];
    self.setMuted('audio', audio ? !audio.enabled : null);
    this.#renderRemote(connection);
    this.#renderToggles();
    this.#setStatus('You joined the call.');
    this.incallTitle.focus();
  }

  /** Rebuild every remote tile from the connection's view of the room. @param {SfuConnection} connection */
  #renderRemote(connection) {
    this.grid.clearRemote();
    for (const participant of connection.participants.values())
      this.grid.ensure(participant.id, participant.identity);
    for (const track of connection.tracks.values()) {
      if (track.participant === connection.participant?.id || track.source === 'screen') continue;
      this.grid.tiles.get(track.participant)?.setMuted(track.kind, track.muted);
    }
    for (const [trackId, mediaTrack] of connection.remoteTracks)
      this.#attach(connection, trackId, mediaTrack);
    this.#reportPeople();
  }

  /**
   * @param {SfuConnection} connection
   * @param {string} trackId
   * @param {MediaStreamTrack} mediaTrack
   */
  #attach(connection, trackId, mediaTrack) {
    const info = connection.tracks.get(trackId);
    if (!info) return;
    const owner = connection.participants.get(info.participant);
    if (info.source === 'screen' && info.kind === 'video') {
      const screen = this.grid.ensureScreen(info.participant, owner?.identity ?? 'Guest');
      screen.setMuted('video', info.muted);
      screen.setVideo(mediaTrack, trackId);
      return;
    }
    const tile = this.grid.ensure(info.participant, owner?.identity ?? 'Guest');
    tile.setMuted(info.kind, info.muted);
    if (info.kind === 'video') {
      tile.setVideo(mediaTrack, trackId);
      this.#watchFirstFrame(tile.video);
    } else {
      void tile.setAudio(mediaTrack, trackId).then((playing) => {
        if (!playing) show(this.soundButton, true);
      });
    }
  }

  /** @param {HTMLVideoElement} video */
  #watchFirstFrame(video) {
    if (this.metrics.firstRemoteFrameAt) return;
    const done = () => {
      if (!this.metrics.firstRemoteFrameAt) this.metrics.firstRemoteFrameAt = performance.now();
    };
    if ('requestVideoFrameCallback' in video) video.requestVideoFrameCallback(done);
    else /** @type {HTMLVideoElement} */ (video).addEventListener('loadeddata', done, { once: true });
  }

  /** @param {SfuConnection} connection */
  #listen(connection) {
    for (const off of this.#unsubscribe) off();
    const on = connection.on.bind(connection);
    this.#unsubscribe = [
      on('joined', ({ rejoin }) => {
        if (!rejoin) return;
        this.#renderRemote(connection);
        this.#setStatus('Reconnected.');
        this.incall.removeAttribute('aria-busy');
        this.root.classList.remove('reconnecting');
      }),
      on('state', ({ state, error, attempt }) => {
        if (this.connection !== connection) return;
        if (state === 'reconnecting') {
          this.root.classList.add('reconnecting');
          this.incall.setAttribute('aria-busy', 'true');
          const offline = navigator.onLine === false ? ' You appear to be offline.' : '';
          this.#setStatus(`Connection lost. Reconnecting (attempt ${attempt ?? 1})…${offline}`, {
            sticky: true,
            warn: true,
          });
        } else if (state === 'closed' && error && this.phase === 'incall') {
          this.root.classList.remove('reconnecting');
          this.#closeConnection();
          const { message, retry } = explain(error);
          this.#fail(`You were disconnected. ${message}`, retry);
        }
      }),
      on('participant.joined', ({ participant }) => {
        this.grid.ensure(participant.id, participant.identity);
        this.#setStatus(`${participant.identity} joined.`);
        this.#reportPeople();
      }),
      on('participant.left', ({ participant }) => {
        this.grid.remove(participant.id);
        this.#setStatus(`${participant.identity} left.`);
        this.#reportPeople();
      }),
      on('track.published', ({ track }) => {
        if (track.source === 'screen') return; // its tile comes with the media (remotetrack)
        if (track.participant !== connection.participant?.id)
          this.grid.tiles.get(track.participant)?.setMuted(track.kind, track.muted);
      }),
      on('track.updated', ({ track }) => {
        if (track.source === 'screen') return;
        const tile = this.grid.tiles.get(track.participant);
        if (!tile || track.participant === connection.participant?.id) return;
        const was = tile.muted[track.kind];
        tile.setMuted(track.kind, track.muted);
        if (was !== track.muted) {
          const what = track.kind === 'audio' ? 'microphone' : 'camera';
          this.#setStatus(`${tile.name} turned their ${what} ${track.muted ? 'off' : 'on'}.`);
        }
      }),
      on('track.unpublished', ({ track }) => {
        if (track.source === 'screen') return; // remotetrackended removes the screen tile
        const tile = this.grid.tiles.get(track.participant);
        if (tile && tile.trackIds[track.kind] === track.id) tile.setMuted(track.kind, null);
      }),
      on('remotetrack', ({ trackId, mediaTrack }) => {
        this.metrics.firstRemoteTrackAt ||= performance.now();
        this.#attach(connection, trackId, mediaTrack);
      }),
      on('pcstate', ({ pc, state }) => {
        if (pc === 'subscribe' && state === 'connected')
          this.metrics.subscribeConnectedAt ||= performance.now();
      }),
      on('remotetrackended', ({ trackId }) => {
        const tile = this.grid.byTrack(trackId);
        if (!tile) return;
        if (tile.screen) this.grid.removeTile(tile.id);
        else if (tile.trackIds.video === trackId) tile.setVideo(null, null);
        if (tile.trackIds.audio === trackId) void tile.setAudio(null, null);
      }),
      on('speaker.changed', ({ speakers }) => {
        const self = connection.participant?.id;
        this.grid.setSpeakers(speakers.map((id) => (id === self ? 'self' : id)));
      }),
      on('server.draining', ({ deadline }) => this.#onDraining(connection, deadline)),
      on('recording.state', (state) => {
        const was = this.recordingBar.recordingAnyone;
        const wasSelf = this.recordingBar.recordingSelf;
        const hadFocus = this.recordingBar.element.contains(document.activeElement);
        this.recordingBar.update(state, connection.participant?.id ?? null, (id) => this.#nameOf(id));
        if (wasSelf && !this.recordingBar.recordingSelf && hadFocus) this.incallTitle.focus(); // Withdraw is gone
        if (was && !this.recordingBar.recordingAnyone) this.#setStatus('Recording stopped.');
        const shown = this.consentDialog.current;
        if (shown && state.recording !== shown.request) {
          this.consentDialog.dismiss();
          this.#setStatus('The recording request was withdrawn. Nothing of you was recorded.');
        }
      }),
      on('consent.request', (request) => {
        this.consentDialog.open(request, request.by ? this.#nameOf(request.by) : 'The agent');
      }),
      on('error', ({ error }) => console.warn('oktorus:', error.code, error.message)),
    ];
  }

  /** @param {string} participantId */
  #nameOf(participantId) {
    const connection = this.connection;
    if (participantId === connection?.participant?.id) return 'You';
    return connection?.participants.get(participantId)?.identity ?? 'Someone';
  }

  /**
   * The person answered the consent dialog.
   * @param {import('./protocol.js').ConsentRequest} request
   * @param {boolean} accepted
   */
  async #answer(request, accepted) {
    const connection = this.connection;
    if (!connection) return;
    try {
      if (accepted) {
        await connection.grantConsent(request.request, request.scope);
        this.#setStatus(
          `You agreed to be recorded (${describeScope(request.scope)}). You can withdraw at any time.`,
        );
      } else {
        await connection.refuseConsent(request.request);
        this.#setStatus('You declined. Nothing of you is recorded.');
      }
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      this.#setStatus(
        accepted
          ? `Your consent could not be given (${reason}). Nothing of you is recorded.`
          : `Your answer could not be sent (${reason}). Nothing of you is recorded without your consent.`,
        { sticky: true, warn: true },
      );
    }
  }

  /** @param {boolean} erase */
  async #withdraw(erase) {
    const connection = this.connection;
    if (!connection) return;
    this.recordingBar.withdrawButton.disabled = true;
    try {
      await connection.withdrawConsent({ erase });
      // The Withdraw button (disabled meanwhile, so not focused any more) is gone.
      const focus = document.activeElement;
      if (!focus || focus === document.body || this.recordingBar.element.contains(focus))
        this.incallTitle.focus();
      this.#setStatus(
        erase
          ? 'You withdrew your consent. Recording of you stopped and what was recorded is erased.'
          : 'You withdrew your consent. Recording of you stopped.',
      );
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      this.#setStatus(`Your consent could not be withdrawn (${reason}). Try again.`, {
        sticky: true,
        warn: true,
      });
    } finally {
      this.recordingBar.withdrawButton.disabled = false;
    }
  }

  /**
   * The server is shutting down: say so, and after a short delay re-join through the usual
   * reconnect path — if the server address already answers ready (another node behind it).
   * Otherwise the call goes on here until the server closes it, then reconnects by itself.
   * @param {SfuConnection} connection
   * @param {number} deadline seconds until the server closes the call
   */
  #onDraining(connection, deadline) {
    this.#setStatus('The call server is restarting. Your call will move to another server in a moment…', {
      sticky: true,
      warn: true,
    });
    if (this.#drainTimer) clearTimeout(this.#drainTimer);
    const delay = Math.min(this.options.drainMoveDelayMs ?? 2000, Math.max(0, (deadline * 1000) / 2));
    this.#drainTimer = setTimeout(() => {
      this.#drainTimer = null;
      void (async () => {
        const url = new URL(this.options.signalUrl ?? signalUrl(location));
        url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
        url.pathname = '/readyz';
        url.search = '';
        const ready = await fetch(url, { cache: 'no-store' })
          .then((r) => r.ok)
          .catch(() => false);
        if (this.connection !== connection || connection.state !== 'joined') return;
        if (ready) {
          connection.dropConnection(); // re-join: the address now reaches a server that accepts
        } else {
          this.#setStatus('The call server is restarting. If the call drops, it reconnects by itself.', {
            sticky: true,
            warn: true,
          });
        }
      })();
    }, delay);
  }

  #reportPeople() {
    const connection = this.connection;
    if (!connection || !this.options.onPeople) return;
    const me = connection.participant;
    /** @type {Person[]} */
    const people = me ? [{ id: me.id, identity: me.identity, role: me.role, self: true }] : [];
    for (const p of connection.participants.values())
      people.push({ id: p.id, identity: p.identity, role: p.role, self: false });
    this.options.onPeople(people);
  }

  // --- controls ------------------------------------------------------------------------

  /**
   * Mute or unmute our camera or microphone (before or during the call).
   * @param {'audio' | 'video'} kind
   */
  async toggle(kind) {
    const track = kind === 'video' ? this.stream?.getVideoTracks()[0] : this.stream?.getAudioTracks()[0];
    if (!track) return;
    const muted = track.enabled; // enabled now → mute
    track.enabled = !muted;
    this.grid.tiles.get('self')?.setMuted(kind, muted);
    this.#renderToggles();
    if (this.connection) {
      try {
        await this.connection.setMuted(track, muted);
      } catch (error) {
        console.warn('oktorus: mute not sent', error);
      }
    }
  }

  #renderToggles() {
    const video = this.stream?.getVideoTracks()[0];
    const audio = this.stream?.getAudioTracks()[0];
    const camText = !video ? 'No camera' : video.enabled ? 'Turn camera off' : 'Turn camera on';
    const micText = !audio ? 'No microphone' : audio.enabled ? 'Mute microphone' : 'Unmute microphone';
    for (const button of [this.preCam, this.camButton]) {
      button.textContent = camText;
      button.disabled = !video;
      button.classList.toggle('off', !video?.enabled);
    }
    for (const button of [this.preMic, this.micButton]) {
      button.textContent = micText;
      button.disabled = !audio;
      button.classList.toggle('off', !audio?.enabled);
    }
    const cameraOn = Boolean(video?.enabled);
    show(this.previewOff, !cameraOn);
    this.preview.hidden = !cameraOn;
  }

  // --- leaving -------------------------------------------------------------------------

  #closeConnection() {
    this.screenShare.attach(null);
    for (const off of this.#unsubscribe) off();
    this.#unsubscribe = [];
    this.connection?.close();
    this.connection = null;
    this.#resetRecording();
  }

  /** Forget recording state and the consent dialog (the connection ended). */
  #resetRecording() {
    if (this.#drainTimer) clearTimeout(this.#drainTimer);
    this.#drainTimer = null;
    this.consentDialog.dismiss();
    this.recordingBar.update(null, null, () => '');
    this.options.onConnection?.(null);
  }

  /** Leave the call and turn the camera and microphone off. */
  async leave() {
    const connection = this.connection;
    for (const off of this.#unsubscribe) off();
    this.#unsubscribe = [];
    this.connection = null;
    this.screenShare.attach(null);
    this.#resetRecording();
    if (connection) await connection.leave();
    stopStream(this.stream);
    this.stream = null;
    this.grid.clearRemote();
    this.grid.remove('self');
    this.preview.srcObject = null;
    this.root.classList.remove('reconnecting');
    this.#setStatus('');
    this.#setPhase('left');
    this.options.onPeople?.([]);
    this.leftTitle.focus();
  }
}
