// @ts-check
/**
 * @file The "Share screen" control: capture with `getDisplayMedia`, send it as a second video
 * track marked `source: "screen"` (contentHint "detail", resolution kept over frame rate), stop
 * from the button or from the browser's own "Stop sharing".
 */

import { h } from './dom.js';

/** @typedef {import('./protocol.js').SfuConnection} SfuConnection */

export class ScreenShare {
  /** @type {SfuConnection | null} */
  connection = null;

  /** @param {(text: string, warn?: boolean) => void} say status line for the user */
  constructor(say) {
    this.say = say;
    this.button = h('button', { type: 'button', class: 'control', text: 'Share screen' });
    this.button.hidden = !canShareScreen();
    this.button.addEventListener('click', () => void this.toggle());
    this.#render();
  }

  /** Follow this connection (null: out of the call; a screen being shared stops). @param {SfuConnection | null} connection */
  attach(connection) {
    if (connection !== this.connection) this.connection?.screenTrack?.stop();
    this.connection = connection;
    this.#render();
  }

  async toggle() {
    if (this.connection?.screenTrack) await this.stop();
    else await this.start();
  }

  async start() {
    const connection = this.connection;
    if (!connection) return;
    /** @type {MediaStream} */
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch {
      this.say('Screen sharing was not started.');
      return;
    }
    const track = stream.getVideoTracks()[0];
    if (!track || this.connection !== connection) {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    track.contentHint = 'detail';
    track.addEventListener('ended', () => {
      if (this.connection?.screenTrack === track) void this.stop();
    });
    try {
      await connection.shareScreen(track);
      this.say('You are sharing your screen.');
    } catch (error) {
      track.stop();
      const reason = error instanceof Error ? error.message : String(error);
      this.say(`Your screen could not be shared (${reason}).`, true);
    }
    this.#render();
  }

  async stop() {
    const connection = this.connection;
    const track = connection?.screenTrack;
    if (!connection || !track) return;
    track.stop();
    this.#render();
    try {
      await connection.stopScreenShare();
      this.say('You stopped sharing your screen.');
    } catch {
      // the next publish (or re-join) leaves it out anyway
    }
    this.#render();
  }

  #render() {
    const sharing = Boolean(this.connection?.screenTrack && this.connection.screenTrack.readyState === 'live');
    this.button.textContent = sharing ? 'Stop sharing' : 'Share screen';
    this.button.setAttribute('aria-pressed', String(sharing));
    this.button.disabled = !this.connection;
  }
}

/** @returns {boolean} */
function canShareScreen() {
  return typeof navigator !== 'undefined' && typeof navigator.mediaDevices?.getDisplayMedia === 'function';
}
