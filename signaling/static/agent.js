// @ts-check
/**
 * @file The agent console (`/agent`): sign in with an agent (or admin) access token, open a
 * support session (`POST /v1/sessions`), hand the customer the invite link, join the call and
 * see who is present. The sign-in token stays in this tab's session storage only.
 */

import { CallView } from './call-view.js';
/** @typedef {import('./protocol.js').SfuConnection} SfuConnection */
import { byId, h, show } from './dom.js';
import { peekTokenClaims } from './protocol.js';
import { describeScope } from './recording-ui.js';

const TOKEN_KEY = 'oktorus.agent.token';
const DEFAULT_NOTICE =
  'With your permission, we would like to record this support call so that we can review it ' +
  'and improve our service. The recording is stored encrypted; only authorised staff and you ' +
  'can access it. Nothing is recorded unless you accept. You can withdraw your consent at any ' +
  'time during the call, and ask us to erase the recording.';

/**
 * @typedef {object} SupportSession
 * @property {string} room
 * @property {string} agent_token
 * @property {string} customer_token
 * @property {string} join_url
 * @property {number} expires_in
 */

const ui = {
  signIn: byId('sign-in', HTMLElement),
  signInForm: byId('sign-in-form', HTMLFormElement),
  tokenInput: byId('agent-token', HTMLTextAreaElement),
  signInError: byId('sign-in-error', HTMLElement),
  signedIn: byId('signed-in', HTMLElement),
  agentName: byId('agent-name', HTMLElement),
  signOut: byId('sign-out', HTMLButtonElement),
  workspace: byId('workspace', HTMLElement),
  openForm: byId('open-form', HTMLFormElement),
  openButton: byId('open-session', HTMLButtonElement),
  customerName: byId('customer-name', HTMLInputElement),
  sessionError: byId('session-error', HTMLElement),
  session: byId('session', HTMLElement),
  roomId: byId('room-id', HTMLElement),
  expires: byId('expires', HTMLTimeElement),
  inviteLink: byId('invite-link', HTMLInputElement),
  copyLink: byId('copy-link', HTMLButtonElement),
  copyStatus: byId('copy-status', HTMLElement),
  openLink: byId('open-link', HTMLAnchorElement),
  closeSession: byId('close-session', HTMLButtonElement),
  people: byId('people', HTMLUListElement),
  call: byId('call', HTMLElement),
  recordingHint: byId('recording-hint', HTMLElement),
  recordingForm: byId('recording-form', HTMLFormElement),
  scopeAudio: byId('scope-audio', HTMLInputElement),
  scopeVideo: byId('scope-video', HTMLInputElement),
  notice: byId('recording-notice', HTMLTextAreaElement),
  recordingError: byId('recording-error', HTMLElement),
  startRecording: byId('start-recording', HTMLButtonElement),
  stopRecording: byId('stop-recording', HTMLButtonElement),
  consents: byId('consents', HTMLUListElement),
};
ui.notice.value = DEFAULT_NOTICE;

/** @type {CallView | null} */
let view = null;
/** The call's connection while the agent is in it. @type {SfuConnection | null} */
let connection = null;
/** @type {Array<() => void>} */
let unlisten = [];
let recordingBusy = false;

/**
 * Why a token cannot sign in, or null if it looks usable (the server decides for real).
 * @param {string} token
 * @returns {string | null}
 */
function tokenProblem(token) {
  const claims = peekTokenClaims(token);
  if (!claims) return 'That is not an access token. Paste the whole token (three parts separated by dots).';
  if (typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now())
    return 'This token has expired. Ask for a new one.';
  const admin = Array.isArray(claims.grants) && claims.grants.includes('admin');
  if (claims.role !== 'agent' && !admin)
    return 'This token is not an agent token (it needs role agent or the admin grant).';
  return null;
}

/** @param {string} token */
function enterConsole(token) {
  ui.agentName.textContent = peekTokenClaims(token)?.sub ?? 'agent';
  show(ui.signIn, false);
  show(ui.signedIn, true);
  show(ui.workspace, true);
  ui.openButton.focus();
}

/** @param {string} [message] */
async function signOut(message) {
  await closeSession();
  sessionStorage.removeItem(TOKEN_KEY);
  show(ui.workspace, false);
  show(ui.signedIn, false);
  show(ui.signIn, true);
  ui.tokenInput.value = '';
  ui.signInError.textContent = message ?? '';
  show(ui.signInError, Boolean(message));
  ui.tokenInput.focus();
}

ui.signInForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim();
  const problem = token ? tokenProblem(token) : 'Paste your access token first.';
  if (problem) {
    ui.signInError.textContent = problem;
    show(ui.signInError, true);
    ui.tokenInput.setAttribute('aria-invalid', 'true');
    ui.tokenInput.focus();
    return;
  }
  ui.tokenInput.removeAttribute('aria-invalid');
  show(ui.signInError, false);
  sessionStorage.setItem(TOKEN_KEY, token);
  enterConsole(token);
});

ui.signOut.addEventListener('click', () => void signOut());

/**
 * `POST /v1/sessions`; throws an Error with the server's message.
 * @param {string} token
 * @param {string} customer
 * @returns {Promise<SupportSession>}
 */
async function openSession(token, customer) {
  const response = await fetch('/v1/sessions', {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(customer ? { customer } : {}),
    cache: 'no-store',
  });
  /** @type {unknown} */
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = /** @type {{ error?: { code?: string, message?: string } } | null} */ (body)?.error;
    throw Object.assign(new Error(error?.message ?? `HTTP ${response.status}`), { status: response.status });
  }
  return /** @type {SupportSession} */ (body);
}

ui.openForm.addEventListener('submit', (event) => {
  event.preventDefault();
  void (async () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return signOut('Please sign in again.');
    ui.openButton.disabled = true;
    show(ui.sessionError, false);
    try {
      await closeSession();
      const session = await openSession(token, ui.customerName.value.trim());
      showSession(session);
    } catch (error) {
      const status = /** @type {{ status?: number }} */ (error).status;
      const message = error instanceof Error ? error.message : String(error);
      if (status === 401) return signOut(`Your sign-in was refused (${message}). Sign in again.`);
      ui.sessionError.textContent =
        status === 403
          ? `You may not open sessions with this token: ${message}`
          : `The session could not be opened: ${message}`;
      show(ui.sessionError, true);
    } finally {
      ui.openButton.disabled = false;
    }
    return undefined;
  })();
});

/** @param {SupportSession} session */
function showSession(session) {
  ui.roomId.textContent = session.room;
  const expires = new Date(Date.now() + session.expires_in * 1000);
  ui.expires.dateTime = expires.toISOString();
  ui.expires.textContent = expires.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  ui.inviteLink.value = session.join_url;
  ui.openLink.href = session.join_url;
  ui.copyStatus.textContent = '';
  show(ui.session, true);
  view = new CallView(ui.call, {
    token: session.agent_token,
    joinLabel: 'Join the call',
    onPeople: (people) => {
      renderPeople(people);
      renderRecording();
    },
    onConnection: useConnection,
    headingLevel: 3,
  });
  void view.start();
  ui.copyLink.focus();
}

async function closeSession() {
  if (view) await view.leave();
  view = null;
  show(ui.session, false);
  ui.inviteLink.value = '';
  ui.openLink.href = '#';
  ui.call.replaceChildren(h('p', { class: 'hint', text: 'Open a support session to start a call.' }));
  renderPeople([]);
}

ui.closeSession.addEventListener('click', () => void closeSession().then(() => ui.openButton.focus()));

ui.copyLink.addEventListener('click', () => {
  void (async () => {
    const link = ui.inviteLink.value;
    try {
      await navigator.clipboard.writeText(link);
    } catch {
      ui.inviteLink.select(); // the person can press Ctrl+C / Cmd+C
      ui.copyStatus.textContent = 'Select the link and copy it (Ctrl+C or ⌘C).';
      return;
    }
    ui.copyStatus.textContent = 'Invite link copied. Send it to the customer.';
  })();
});

/** @param {import('./call-view.js').Person[]} people */
function renderPeople(people) {
  if (people.length === 0) {
    ui.people.replaceChildren(h('li', { class: 'hint', text: 'Join the call to see who is present.' }));
    return;
  }
  ui.people.replaceChildren(
    ...people.map((p) =>
      h(
        'li',
        {},
        h('span', { class: 'name', text: p.self ? `${p.identity} (you)` : p.identity }),
        ' ',
        h('span', { class: 'role', text: p.role }),
      ),
    ),
  );
}

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved && !tokenProblem(saved)) enterConsole(saved);
else if (saved) void signOut(tokenProblem(saved) ?? undefined);

// --- recording with consent -------------------------------------------------------------

/** @param {SfuConnection | null} next */
function useConnection(next) {
  for (const off of unlisten) off();
  unlisten = [];
  connection = next;
  if (next) {
    unlisten = [
      next.on('state', renderRecording),
      next.on('recording.state', renderRecording),
      next.on('participant.joined', renderRecording),
      next.on('participant.left', renderRecording),
    ];
  }
  renderRecording();
}

/** Words for one participant's answer (never colour alone). */
const ANSWER_WORDS = {
  pending: 'Pending: asked, no answer yet',
  refused: 'Refused: not recorded',
  withdrawn: 'Withdrawn: recording stopped',
};

function renderRecording() {
  const joined = connection?.state === 'joined' ? connection : null;
  const state = joined?.recording ?? null;
  const requested = Boolean(state?.recording);
  show(ui.recordingHint, !joined);
  ui.startRecording.disabled = !joined || requested || recordingBusy;
  ui.stopRecording.disabled = !joined || !requested || recordingBusy;
  if (!joined || !state || !requested) {
    ui.consents.replaceChildren(h('li', { class: 'hint', text: 'No recording requested.' }));
    return;
  }
  if (state.requests.length === 0) {
    ui.consents.replaceChildren(h('li', { class: 'hint', text: 'Nobody else is in the call to ask yet.' }));
    return;
  }
  ui.consents.replaceChildren(
    ...state.requests.map(({ participant, state: answer }) => {
      const name = joined.participants.get(participant)?.identity ?? 'Someone who left';
      let words;
      if (answer === 'granted') {
        const recorded = state.participants.find((p) => p.id === participant);
        words = recorded
          ? `Granted: recording ${describeScope(recorded.scope)}`
          : 'Granted: not recording yet (nothing published)';
      } else {
        words = ANSWER_WORDS[answer];
      }
      return h(
        'li',
        { 'data-state': answer },
        h('span', { class: 'name', text: name }),
        ' ',
        h('span', { class: 'consent-state', text: words }),
      );
    }),
  );
}

/** @param {string} message */
function recordingFailed(message) {
  ui.recordingError.textContent = message;
  show(ui.recordingError, Boolean(message));
}

/**
 * @param {() => Promise<void>} action
 * @param {string} what
 * @param {HTMLElement} next where focus goes when it worked (the clicked button is disabled)
 */
async function recordingAction(action, what, next) {
  recordingFailed('');
  recordingBusy = true;
  renderRecording();
  try {
    await action();
    recordingBusy = false;
    renderRecording();
    next.focus();
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    recordingFailed(`Could not ${what}: ${reason}`);
  } finally {
    recordingBusy = false;
    renderRecording();
  }
}

ui.recordingForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const current = connection;
  if (!current) return;
  /** @type {Array<'audio' | 'video'>} */
  const scope = [];
  if (ui.scopeAudio.checked) scope.push('audio');
  if (ui.scopeVideo.checked) scope.push('video');
  const notice = ui.notice.value.trim();
  if (scope.length === 0) {
    recordingFailed('Choose what to record: audio, video or both.');
    ui.scopeAudio.focus();
    return;
  }
  if (!notice) {
    recordingFailed('Write the notice the customer will read before agreeing.');
    ui.notice.setAttribute('aria-invalid', 'true');
    ui.notice.focus();
    return;
  }
  ui.notice.removeAttribute('aria-invalid');
  void recordingAction(() => current.startRecording(scope, notice), 'request recording', ui.stopRecording);
});

ui.stopRecording.addEventListener('click', () => {
  const current = connection;
  if (current) void recordingAction(() => current.stopRecording(), 'stop recording', ui.startRecording);
});
