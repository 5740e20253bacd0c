// @ts-check
/** @file Tiny DOM helpers shared by the pages (no framework). */

/** @typedef {Node | string | null | undefined | false} Child */

/**
 * Create an element. `attrs`: strings become attributes, `true` an empty attribute, `false`
 * and `undefined` nothing; `text` sets the text content.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | boolean | undefined>} [attrs]
 * @param {...Child} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (name === 'text') element.textContent = String(value);
    else element.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child);
  }
  return element;
}

/**
 * The element with this id, of this type; throws if the page lacks it.
 * @template {typeof HTMLElement} T
 * @param {string} id
 * @param {T} type
 * @returns {InstanceType<T>}
 */
export function byId(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new Error(`#${id} is missing or not a ${type.name}`);
  return /** @type {InstanceType<T>} */ (element);
}

/**
 * Show or hide an element (the `hidden` attribute; CSS never overrides it).
 * @param {HTMLElement} element
 * @param {boolean} visible
 */
export function show(element, visible) {
  element.hidden = !visible;
}

/**
 * Initials for an avatar: "Ada Lovelace" → "AL".
 * @param {string} name
 */
export function initials(name) {
  const words = name
    .replace(/[^\p{L}\p{N} ]/gu, ' ')
    .trim()
    .split(/\s+/)
    .filter(Boolean);
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : [words[0] ?? '?'];
  return letters
    .map((w) => [...(w ?? '?')][0] ?? '?')
    .join('')
    .toUpperCase();
}
