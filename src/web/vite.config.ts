import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

// The dashboard is served by hearthd under /ui/ (see src/api/routes/web.ts, docs/dashboard.md).
export default defineConfig({
  root: here,
  base: '/ui/',
  plugins: [react()],
  build: {
    outDir: fileURLToPath(new URL('../../dist/web', import.meta.url)),
    emptyOutDir: true,
    chunkSizeWarningLimit: 1500,
  },
  server: {
    // `npx vite --config src/web/vite.config.ts` against a hearthd on :3030.
    proxy: Object.fromEntries(['/sandboxes', '/snapshots', '/templates', '/doctor', '/health'].map((p) => [p, 'http://127.0.0.1:3030'])),
  },
});
