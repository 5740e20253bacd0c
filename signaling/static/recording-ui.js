// @ts-check
/**
 * @file The recording parts of the call view (docs/consent.md): the consent dialog a person
 * answers when an agent asks to record them, and the "● Recording" indicator everyone in the
 * call sees, with "Withdraw consent" while this person is recorded. UI only: the protocol is in
 * protocol.js; CallView connects the two.
 */

import { h, show } from './dom.js';

/** @typedef {import('./protocol.js').ConsentRequest} ConsentRequest */
/** @typedef {import('./protocol.js').RecordingState} RecordingState */
/** @typedef {import('./protocol.js').MediaKind} MediaKind */

/**
 * "audio and video", "audio", "video" (nothing: "nothing").
 * @param {readonly string[]} scope
 */
export function describeScope(scope) {
  const sorted = [...scope].sort();
  if (sorted.length === 0) return 'nothing';
  return sorted.join(' and ');
}

/** @param {readonly string[]} scope */
function describeDevices(scope) {
  /** @type {Record<string, string>} */
  const words = { audio: 'your microphone (audio)', video: 'your camera (video)' };
  const parts = [...scope].sort().map((kind) => words[kind] ?? kind);
  return parts.length ? parts.join(' and ') : 'nothing';
}

/**
 * The modal consent dialog. Accept grants exactly the requested scope; Decline, Escape and
 * closing it any other way refuse. Nothing is pre-selected: focus starts on the heading.
 */
export class ConsentDialog {
  /** The request being shown. @type {ConsentRequest | null} */
  current = null;
  #accepted = false;
  #silent = false;

  /**
   * @param {(request: ConsentRequest, accepted: boolean) => void} onAnswer
   */
  constructor(onAnswer) {
    this.onAnswer = onAnswer;
    this.title = h('h2', { id: 'consent-title', tabindex: '-1', text: 'May we record you?' });
    this.asker = h('p', { id: 'consent-asker' });
    this.scope = h('p', { id: 'consent-scope' });
    this.notice = h('div', { id: 'consent-notice', class: 'consent-notice' });
    this.declineButton = h('button', { type: 'button', class: 'choice', text: 'Decline' });
    this.acceptButton = h('button', { type: 'button', class: 'choice', text: 'Accept' });
    this.element = h(
      'dialog',
      {
        class: 'consent',
        role: 'dialog',
        'aria-modal': 'true',
        'aria-labelledby': 'consent-title',
        'aria-describedby': 'consent-asker consent-scope consent-notice',
      },
      this.title,
      this.asker,
      this.scope,
      h('p', { class: 'consent-notice-label', text: 'Their notice:' }),
      this.notice,
      h('p', {
        class: 'hint',
        text:
          'Nothing of you is recorded unless you accept. If you accept, you can withdraw your ' +
          'consent at any time during the call. Decline (or Escape) means no.',
      }),
      h('div', { class: 'row choices' }, this.declineButton, this.acceptButton),
    );
    this.acceptButton.addEventListener('click', () => {
      this.#accepted = true;
      this.element.close('accept');
    });
    this.declineButton.addEventListener('click', () => this.element.close('decline'));
    // Escape closes a modal <dialog> (with or without a `cancel` event first): a refusal.
    this.element.addEventListener('close', () => {
      const request = this.current;
      const accepted = this.#accepted;
      const silent = this.#silent;
      this.current = null;
      this.#accepted = false;
      this.#silent = false;
      if (request && !silent) this.onAnswer(request, accepted);
    });
  }

  /**
   * Show a request (replacing one shown already, e.g. after a re-join asked again).
   * @param {ConsentRequest} request
   * @param {string} askedBy the name of who asks
   */
  open(request, askedBy) {
    this.current = request;
    this.#accepted = false;
    this.asker.textContent = `${askedBy} asks to record you in this call. Purpose: ${request.purpose || 'not given'}.`;
    this.scope.replaceChildren(h('strong', { text: 'What would be recorded: ' }), describeDevices(request.scope));
    this.notice.textContent = request.notice;
    if (!this.element.isConnected) document.body.append(this.element);
    if (!this.element.open) this.element.showModal();
    this.title.focus();
  }

  /** Close without answering (the request ended, or the call did). */
  dismiss() {
    if (!this.element.open) {
      this.current = null;
      return;
    }
    this.#silent = true;
    this.element.close('dismissed');
  }
}

/**
 * The recording indicator (a polite live region, always rendered: an empty one takes no space)
 * and, while this person is recorded, "Withdraw consent" with an unchecked "also erase".
 */
export class RecordingBar {
  recordingSelf = false;
  recordingAnyone = false;

  /** @param {(erase: boolean) => void} onWithdraw */
  constructor(onWithdraw) {
    // A polite live region without role="status": the view's status line keeps that role.
    this.indicator = h('p', {
      class: 'recording-indicator',
      'aria-live': 'polite',
      'aria-atomic': 'true',
    });
    this.erase = h('input', { type: 'checkbox', id: 'withdraw-erase' });
    this.withdrawButton = h('button', { type: 'button', class: 'secondary', text: 'Withdraw consent' });
    this.withdraw = h(
      'div',
      { class: 'withdraw', role: 'group', 'aria-label': 'Your recording consent' },
      this.withdrawButton,
      h('label', { class: 'check', for: 'withdraw-erase' }, this.erase, ' Also erase what was recorded'),
    );
    this.element = h('div', { class: 'recording-bar' }, this.indicator, this.withdraw);
    this.withdrawButton.addEventListener('click', () => onWithdraw(this.erase.checked));
    this.update(null, null, () => '');
  }

  /**
   * @param {RecordingState | null} state
   * @param {string | null} selfId
   * @param {(participantId: string) => string} nameOf
   */
  update(state, selfId, nameOf) {
    const recorded = state?.participants ?? [];
    const self = recorded.find((p) => p.id === selfId);
    this.recordingSelf = Boolean(self);
    this.recordingAnyone = recorded.length > 0;
    this.element.classList.toggle('on', this.recordingAnyone);
    if (!this.recordingAnyone) {
      this.indicator.replaceChildren();
    } else {
      let text;
      if (self && recorded.length === 1) {
        text = `You are being recorded (${describeScope(self.scope)}).`;
      } else {
        const who = recorded.map(
          (p) => `${p.id === selfId ? 'you' : nameOf(p.id)} (${describeScope(p.scope)})`,
        );
        text = `Being recorded: ${who.join(', ')}.`;
      }
      this.indicator.replaceChildren(h('strong', { class: 'rec', text: '● Recording' }), ' ', text);
    }
    show(this.withdraw, this.recordingSelf);
    if (!this.recordingSelf) this.erase.checked = false;
  }
}
