// A Node.js service that admits only agents with an allowed SPIFFE ID (mTLS, CRL-checked).
//
// Run:
//   cyphrs trust-bundle --out ca.pem     # the root(s): the only trust anchor
//   cyphrs crl --all --out crls.pem      # every CA's CRL (root included)
//   node spiffe_server.mjs server-fullchain.pem server-key.pem ca.pem crls.pem 8443 \
//       spiffe://acme.internal/agent/billing [more allowed IDs ...]
//
// Each accepted connection gets one line "ok <spiffe-id>"; every refusal is logged on
// stderr as "refused: <reason>". No dependencies (Node.js >= 18).
import { readFileSync } from 'node:fs';
import tls from 'node:tls';

const [cert, key, trust, crls, port, ...allowed] = process.argv.slice(2);

// Node gives OpenSSL only the FIRST CRL of a PEM string: pass one string per CRL.
const crlList = readFileSync(crls, 'utf8').match(
  /-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g) ?? [];
if (crlList.length === 0) throw new Error(`no CRL in ${crls}`);

// The X.509-SVID's SPIFFE ID: exactly one URI SAN, with the spiffe scheme. Node quotes
// SAN values that contain separators; a SPIFFE ID never does, so a quoted one is refused.
function spiffeId(peer) {
  const names = (peer.subjectaltname ?? '').split(', ');
  const uris = names.filter((n) => n.startsWith('URI:')).map((n) => n.slice(4));
  if (uris.length !== 1 || !uris[0].startsWith('spiffe://')) return null;
  return uris[0];
}

const server = tls.createServer({
  cert: readFileSync(cert),
  key: readFileSync(key),
  ca: readFileSync(trust),
  crl: crlList, // with a CRL, Node checks the whole chain: every CA needs its CRL
  requestCert: true,
  // Checked below instead: with rejectUnauthorized Node drops a refused agent silently,
  // and the reason (CERT_REVOKED, UNABLE_TO_GET_CRL, CRL_HAS_EXPIRED ...) is lost.
  rejectUnauthorized: false,
  minVersion: 'TLSv1.2',
}, (socket) => {
  if (!socket.authorized) {
    console.error(`refused: ${socket.authorizationError}`);
    socket.destroy();
    return;
  }
  const identity = spiffeId(socket.getPeerCertificate());
  if (!allowed.includes(identity)) {
    console.error(`refused: SPIFFE ID ${identity} not allowed`);
    socket.destroy();
    return;
  }
  socket.end(`ok ${identity}\n`);
});
server.on('tlsClientError', (error) => console.error(`refused: ${error.code} ${error.message}`));
server.listen(Number(port), '127.0.0.1');
