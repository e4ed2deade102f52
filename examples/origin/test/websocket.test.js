'use strict';
// The /ws echo endpoint, driven by a tiny hand-written RFC 6455 client over node:net.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const crypto = require('node:crypto');
const { createOriginServer } = require('../server.js');
const { acceptKey } = require('../lib/websocket.js');

let server;
let port;
test.before(async () => {
  server = createOriginServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = server.address().port;
});
test.after(() => server.shutdown(100));

/** Encode one client frame (always masked, as RFC 6455 §5.3 requires). */
function clientFrame(opcode, payload, { fin = true, mask = true } = {}) {
  const data = Buffer.from(payload);
  const len = data.length;
  const extra = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const header = Buffer.alloc(2 + extra + (mask ? 4 : 0));
  header[0] = (fin ? 0x80 : 0) | opcode;
  header[1] = (mask ? 0x80 : 0) | (extra === 0 ? len : extra === 2 ? 126 : 127);
  if (extra === 2) header.writeUInt16BE(len, 2);
  if (extra === 8) header.writeBigUInt64BE(BigInt(len), 2);
  if (!mask) return Buffer.concat([header, data]);
  const key = crypto.randomBytes(4);
  key.copy(header, 2 + extra);
  const masked = Buffer.alloc(len);
  for (let i = 0; i < len; i++) masked[i] = data[i] ^ key[i & 3];
  return Buffer.concat([header, masked]);
}

/** Connect and handshake; returns {socket, response headers, next(): Promise<frame>}. */
async function connect({ path = '/ws', protocol } = {}) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
  const key = crypto.randomBytes(16).toString('base64');
  socket.write([
    `GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Upgrade: websocket', 'Connection: Upgrade',
    `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13', ...(protocol ? [`Sec-WebSocket-Protocol: ${protocol}`] : []),
    '', '',
  ].join('\r\n'));

  let buffer = Buffer.alloc(0);
  let head = null;
  const frames = [];
  const waiters = [];
  let ended = false;
  const flush = () => {
    while (waiters.length && (frames.length || ended)) waiters.shift()(frames.shift() || null);
  };
  const parse = () => {
    for (;;) {
      if (buffer.length < 2) return;
      let len = buffer[1] & 0x7f;
      let offset = 2;
      if (len === 126) { if (buffer.length < 4) return; len = buffer.readUInt16BE(2); offset = 4; }
      if (len === 127) { if (buffer.length < 10) return; len = Number(buffer.readBigUInt64BE(2)); offset = 10; }
      assert.equal(buffer[1] & 0x80, 0, 'server frames must not be masked');
      if (buffer.length < offset + len) return;
      frames.push({ fin: (buffer[0] & 0x80) !== 0, opcode: buffer[0] & 0x0f, payload: buffer.subarray(offset, offset + len) });
      buffer = buffer.subarray(offset + len);
    }
  };
  socket.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    if (!head) {
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      head = buffer.subarray(0, end).toString();
      buffer = buffer.subarray(end + 4);
      socket.emit('handshake', head);
    }
    parse();
    flush();
  });
  socket.on('end', () => { ended = true; flush(); });
  socket.on('close', () => { ended = true; flush(); });
  const handshake = await new Promise((resolve, reject) => {
    socket.once('handshake', resolve);
    socket.once('close', () => reject(new Error(`closed during handshake: ${buffer.toString()}`)));
  });
  const [statusLine, ...lines] = handshake.split('\r\n');
  const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  return {
    socket, statusLine, headers, key,
    send: (opcode, payload, opts) => socket.write(clientFrame(opcode, payload, opts)),
    next: () => new Promise((resolve) => { waiters.push(resolve); flush(); }),
  };
}

test('handshake answers 101 with the RFC 6455 accept key', async () => {
  const ws = await connect({ protocol: 'echo, chat' });
  assert.equal(ws.statusLine, 'HTTP/1.1 101 Switching Protocols');
  assert.equal(ws.headers['sec-websocket-accept'], acceptKey(ws.key));
  assert.equal(ws.headers['sec-websocket-protocol'], 'echo');
  // The example from RFC 6455 §1.3.
  assert.equal(acceptKey('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
  ws.socket.destroy();
});

test('text and binary messages with 7-, 16- and 64-bit lengths are echoed unmasked', async () => {
  const ws = await connect();
  const cases = [
    [0x1, Buffer.from('hello, edgeproxy ✓')],
    [0x2, crypto.randomBytes(125)],
    [0x2, crypto.randomBytes(126)],
    [0x1, Buffer.from('x'.repeat(65_535))],
    [0x2, crypto.randomBytes(65_536)],
    [0x2, crypto.randomBytes(1_000_000)],
    [0x1, Buffer.alloc(0)],
  ];
  for (const [opcode, payload] of cases) {
    ws.send(opcode, payload);
    const frame = await ws.next();
    assert.equal(frame.opcode, opcode);
    assert.ok(frame.fin);
    assert.ok(frame.payload.equals(payload), `echo of ${payload.length} bytes`);
  }
  ws.socket.destroy();
});

test('frames split across TCP writes and several frames in one write are both handled', async () => {
  const ws = await connect();
  const frame = clientFrame(0x1, 'split across writes');
  for (let i = 0; i < frame.length; i++) ws.socket.write(frame.subarray(i, i + 1));
  assert.equal((await ws.next()).payload.toString(), 'split across writes');
  ws.socket.write(Buffer.concat([clientFrame(0x1, 'one'), clientFrame(0x1, 'two'), clientFrame(0x9, 'p')]));
  assert.equal((await ws.next()).payload.toString(), 'one');
  assert.equal((await ws.next()).payload.toString(), 'two');
  const pong = await ws.next();
  assert.equal(pong.opcode, 0xa);
  assert.equal(pong.payload.toString(), 'p');
  ws.socket.destroy();
});

test('ping gets a pong with the same payload', async () => {
  const ws = await connect();
  ws.send(0x9, 'are you there?');
  const frame = await ws.next();
  assert.equal(frame.opcode, 0xa);
  assert.equal(frame.payload.toString(), 'are you there?');
  ws.socket.destroy();
});

test('a fragmented message is reassembled and echoed as one message', async () => {
  const ws = await connect();
  ws.send(0x1, 'frag', { fin: false });
  ws.send(0x9, 'mid'); // control frames may arrive between fragments
  ws.send(0x0, 'men', { fin: false });
  ws.send(0x0, 'ted', { fin: true });
  const pong = await ws.next();
  assert.equal(pong.opcode, 0xa);
  const message = await ws.next();
  assert.equal(message.opcode, 0x1);
  assert.equal(message.payload.toString(), 'fragmented');
  ws.socket.destroy();
});

test('a close frame is answered with the same code and the connection ends', async () => {
  const ws = await connect();
  const payload = Buffer.alloc(2);
  payload.writeUInt16BE(1000, 0);
  ws.send(0x8, Buffer.concat([payload, Buffer.from('bye')]));
  const frame = await ws.next();
  assert.equal(frame.opcode, 0x8);
  assert.equal(frame.payload.readUInt16BE(0), 1000);
  assert.equal(await ws.next(), null); // then the server closes the TCP connection
});

test('protocol errors close with 1002 instead of crashing', async () => {
  const unmasked = await connect();
  unmasked.send(0x1, 'not masked', { mask: false });
  const frame = await unmasked.next();
  assert.equal(frame.opcode, 0x8);
  assert.equal(frame.payload.readUInt16BE(0), 1002);

  const stray = await connect();
  stray.send(0x0, 'continuation without a start');
  assert.equal((await stray.next()).payload.readUInt16BE(0), 1002);

  const badUtf8 = await connect();
  badUtf8.send(0x1, Buffer.from([0xff, 0xfe]));
  assert.equal((await badUtf8.next()).payload.readUInt16BE(0), 1007);

  // The server is still fine afterwards.
  const ok = await connect();
  ok.send(0x1, 'still here');
  assert.equal((await ok.next()).payload.toString(), 'still here');
  ok.socket.destroy();
});

test('upgrades elsewhere or without a valid key are refused', async () => {
  const elsewhere = await connect({ path: '/not-ws' });
  assert.match(elsewhere.statusLine, /^HTTP\/1\.1 404/);
  assert.equal(await elsewhere.next(), null);
  const socket = net.connect(port, '127.0.0.1');
  socket.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n');
  const response = await new Promise((resolve) => {
    let data = '';
    socket.on('data', (d) => { data += d; });
    socket.on('close', () => resolve(data));
  });
  assert.match(response, /^HTTP\/1\.1 400/);
});

test('shutting down says goodbye to open WebSockets with 1001', async () => {
  const own = createOriginServer();
  await new Promise((resolve) => own.listen(0, '127.0.0.1', resolve));
  const savedPort = port;
  port = own.address().port;
  try {
    const ws = await connect();
    const closed = own.shutdown(2000);
    const frame = await ws.next();
    assert.equal(frame.opcode, 0x8);
    assert.equal(frame.payload.readUInt16BE(0), 1001);
    ws.send(0x8, frame.payload.subarray(0, 2)); // complete the close handshake
    await closed;
  } finally {
    port = savedPort;
  }
});
