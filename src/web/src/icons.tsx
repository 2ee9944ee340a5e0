/** Inline SVG icons (no emoji: headless/minimal hosts often lack an emoji font). */
export function Logo() {
  return <svg width="18" height="18" viewBox="0 0 24 24" aria-hidden="true" style={{ verticalAlign: '-3px' }}>
    <path fill="#f76707" d="M12 2c1 3.5-1.5 5.5-3 7.5C7.6 11.4 7 13 7 14.5 7 18 9.2 21 12 21s5-3 5-6.5c0-2.6-1.4-4.4-2.4-5.6-.3 1.6-1 2.6-2 3.1.6-3.3-.1-7-.6-10z" />
    <path fill="#ffd43b" d="M12 21c-1.7 0-3-1.5-3-3.5 0-1.8 1.3-3 2.2-4.2.3 1.1.9 1.8 1.7 2.1-.1-1 .2-1.9.7-2.6.8 1.1 1.4 2.6 1.4 4.2 0 2.3-1.3 4-3 4z" />
  </svg>;
}
export function FolderIcon() {
  return <svg className="icon" width="14" height="14" viewBox="0 0 16 16" aria-hidden="true"><path fill="#f0b429" d="M1 3.5A1.5 1.5 0 0 1 2.5 2h3.6l1.5 1.5h5.9A1.5 1.5 0 0 1 15 5v7.5a1.5 1.5 0 0 1-1.5 1.5h-11A1.5 1.5 0 0 1 1 12.5z" /></svg>;
}
export function FileIcon() {
  return <svg className="icon" width="14" height="14" viewBox="0 0 16 16" aria-hidden="true"><path fill="#adb5bd" d="M3 1.5A1.5 1.5 0 0 1 4.5 0h5L14 4.5v10a1.5 1.5 0 0 1-1.5 1.5h-8A1.5 1.5 0 0 1 3 14.5z" /><path fill="#dee2e6" d="M9.5 0v3A1.5 1.5 0 0 0 11 4.5h3z" /></svg>;
}
