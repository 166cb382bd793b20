// Runs NocoDB as the acceptance test needs it: one express app on loopback, metadata in the
// PostgreSQL database that NC_DB names, first user from NC_ADMIN_EMAIL/NC_ADMIN_PASSWORD.
// Started by tests/nocodb/harness.py with NODE_PATH pointing at the cached install; prints
// "NOCODB READY <port>" once it accepts requests.
'use strict';

const http = require('http');
const express = require('express');
const { Noco } = require('nocodb');

const host = process.env.NOCODB_TEST_HOST || '127.0.0.1';
const port = Number(process.env.PORT || 0);

async function main() {
  const app = express();
  app.disable('x-powered-by');
  const server = http.createServer(app);
  app.use(await Noco.init({}, server, app));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  console.log(`NOCODB READY ${server.address().port}`);
  const stop = () => server.close(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err) => {
  console.error('NOCODB FAILED', err && err.stack ? err.stack : err);
  process.exit(1);
});
