// A service every sandbox from the node-service template starts with: already listening when the
// sandbox is created (it runs before the template's warm snapshot is taken).
const http = require('node:http');

const started = new Date().toISOString();
http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ ok: true, path: req.url, started }));
}).listen(Number(process.env.PORT || 3000), '0.0.0.0');
