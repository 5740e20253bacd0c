// @ts-check
/**
 * @file The customer call page (`/join?token=…`): takes the token from the invite link (and
 * moves it out of the address bar into this tab's session storage, so it is not shown, shared
 * in screenshots or kept in history), then runs the call view.
 */

import { CallView } from './call-view.js';
import { byId, show } from './dom.js';

const TOKEN_KEY = 'oktorus.call.token';

/** The invite token: from the URL (then hidden from it), else from this tab's storage. */
function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
    return fromUrl;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();
const root = byId('call', HTMLElement);
if (!token) {
  show(byId('no-token', HTMLElement), true);
} else {
  const view = new CallView(root, { token });
  void view.start();
}
