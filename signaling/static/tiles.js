// @ts-check
/**
 * @file The participant grid: one tile per person with video (or initials), name, and state
 * badges in words ("Microphone off", "Camera off", "Speaking") so nothing relies on colour.
 */

import { h, initials } from './dom.js';

/**
 * One participant's tile.
 */
export class Tile {
  /**
   * @param {string} id participant id (or "self")
   * @param {string} name shown under the video and used as the tile's accessible name
   * @param {boolean} self our own tile (mirrored preview, never plays its own audio)
   * @param {boolean} [screen] someone's shared screen (shown large, whole, no audio)
   */
  constructor(id, name, self, screen = false) {
    this.id = id;
    this.name = name;
    this.self = self;
    this.screen = screen;
    /** Track ids shown here, by kind. @type {{ audio: string | null, video: string | null }} */
    this.trackIds = { audio: null, video: null };
    /** @type {{ audio: boolean | null, video: boolean | null }} null: not published */
    this.muted = { audio: null, video: null };
    this.speaking = false;
    this.video = h('video', {
      autoplay: true,
      playsinline: true,
      muted: true,
      class: self ? 'mirror' : undefined,
    });
    this.video.muted = true;
    this.audio = h('audio', { autoplay: true });
    this.avatar = h('div', { class: 'avatar', 'aria-hidden': 'true', text: initials(name) });
    this.badges = h('span', { class: 'badges' });
    this.article = h(
      'article',
      { class: 'tile-body', 'aria-label': self ? `${name} (you)` : name },
      h('div', { class: 'media' }, this.video, this.avatar, self || screen ? null : this.audio),
      h(
        'p',
        { class: 'caption' },
        h('span', { class: 'name', text: self ? `${name} (you)` : name }),
        this.badges,
      ),
    );
    const kind = self ? 'tile self' : screen ? 'tile screen' : 'tile';
    this.element = h('li', { class: kind, 'data-participant': id }, this.article);
    this.render();
  }

  /**
   * Show a video track (null: none).
   * @param {MediaStreamTrack | null} track
   * @param {string | null} trackId
   */
  setVideo(track, trackId) {
    this.trackIds.video = trackId;
    this.video.srcObject = track ? new MediaStream([track]) : null;
    if (track) void this.video.play().catch(() => undefined);
    this.render();
  }

  /**
   * Play an audio track (null: none). Resolves false if the browser blocked playback.
   * @param {MediaStreamTrack | null} track
   * @param {string | null} trackId
   * @returns {Promise<boolean>}
   */
  async setAudio(track, trackId) {
    this.trackIds.audio = trackId;
    this.audio.srcObject = track ? new MediaStream([track]) : null;
    this.render();
    if (!track) return true;
    try {
      await this.audio.play();
      return true;
    } catch {
      return false;
    }
  }

  /**
   * @param {'audio' | 'video'} kind
   * @param {boolean | null} muted null: no such track published
   */
  setMuted(kind, muted) {
    this.muted[kind] = muted;
    this.render();
  }

  /** @param {boolean} speaking */
  setSpeaking(speaking) {
    this.speaking = speaking;
    this.render();
  }

  render() {
    const videoOn = this.video.srcObject !== null && this.muted.video === false;
    this.video.hidden = !videoOn;
    this.avatar.hidden = videoOn;
    this.element.classList.toggle('speaking', this.speaking);
    this.element.classList.toggle('no-video', !videoOn);
    /** @type {Array<[string, string]>} */
    const badges = [];
    if (this.screen) {
      this.badges.replaceChildren(h('span', { class: 'badge screen', text: 'Screen share' }));
      return;
    }
    if (this.speaking) badges.push(['speaking', 'Speaking']);
    if (this.muted.audio !== false)
      badges.push(['mic-off', this.muted.audio === null ? 'No microphone' : 'Microphone off']);
    if (this.muted.video !== false)
      badges.push(['cam-off', this.muted.video === null ? 'No camera' : 'Camera off']);
    this.badges.replaceChildren(...badges.map(([cls, text]) => h('span', { class: `badge ${cls}`, text })));
  }

  remove() {
    this.video.srcObject = null;
    this.audio.srcObject = null;
    this.element.remove();
  }
}

/**
 * The grid of tiles: keeps the self tile last and tells CSS how many there are.
 */
export class Grid {
  /** @param {HTMLUListElement} list */
  constructor(list) {
    this.list = list;
    /** @type {Map<string, Tile>} */
    this.tiles = new Map();
  }

  /**
   * The tile of this participant, created if needed.
   * @param {string} id
   * @param {string} name
   * @param {boolean} [self]
   * @returns {Tile}
   */
  ensure(id, name, self = false) {
    let tile = this.tiles.get(id);
    if (!tile) {
      tile = new Tile(id, name, self);
      this.tiles.set(id, tile);
      // Others first, ourselves last (the self view is the small one on phones).
      const selfTile = [...this.tiles.values()].find((t) => t.self && t !== tile);
      this.list.insertBefore(tile.element, self ? null : (selfTile?.element ?? null));
      this.#layout();
    }
    return tile;
  }

  /**
   * The large tile showing this participant's shared screen, created if needed (first).
   * @param {string} owner participant id
   * @param {string} name the owner's name
   * @returns {Tile}
   */
  ensureScreen(owner, name) {
    const id = screenTileId(owner);
    let tile = this.tiles.get(id);
    if (!tile) {
      tile = new Tile(id, `${name}'s screen`, false, true);
      this.tiles.set(id, tile);
      this.list.prepend(tile.element);
      this.#layout();
    }
    return tile;
  }

  /** Remove a participant's tile (and its screen tile). @param {string} id */
  remove(id) {
    for (const key of [id, screenTileId(id)]) {
      this.tiles.get(key)?.remove();
      this.tiles.delete(key);
    }
    this.#layout();
  }

  /** Remove one tile by its own id (e.g. a screen tile when the share ends). @param {string} id */
  removeTile(id) {
    this.tiles.get(id)?.remove();
    this.tiles.delete(id);
    this.#layout();
  }

  /** Remove every tile but our own. */
  clearRemote() {
    for (const tile of [...this.tiles.values()]) if (!tile.self) this.remove(tile.id);
  }

  /**
   * The tile showing this track, if any.
   * @param {string} trackId
   * @returns {Tile | undefined}
   */
  byTrack(trackId) {
    for (const tile of this.tiles.values()) {
      if (tile.trackIds.audio === trackId || tile.trackIds.video === trackId) return tile;
    }
    return undefined;
  }

  /** @param {string[]} speakers participant ids, loudest first ("self" for us) */
  setSpeakers(speakers) {
    const loudest = speakers[0];
    for (const tile of this.tiles.values()) tile.setSpeaking(tile.id === loudest);
  }

  #layout() {
    this.list.dataset.count = String(Math.min(this.tiles.size, 9));
  }
}

/** @param {string} owner @returns {string} */
function screenTileId(owner) {
  return `screen:${owner}`;
}
