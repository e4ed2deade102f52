'use strict';
// A minimal RFC 6455 echo server: handshake (§4.2), masked client frames with 7/16/64-bit lengths (§5.2),
// fragmented messages (§5.4), ping/pong (§5.5.2-3) and the close handshake (§5.5.1). No extensions.

const crypto = require('node:crypto');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const MAX_MESSAGE = 16 * 1024 * 1024;
const OP = { CONT: 0x0, TEXT: 0x1, BINARY: 0x2, CLOSE: 0x8, PING: 0x9, PONG: 0xa };

function acceptKey(key) {
  return crypto.createHash('sha1').update(key + GUID).digest('base64');
}

function rejectUpgrade(socket, status, reason, extra = '') {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n${extra}\r\n`);
}

/** Complete the handshake on an http 'upgrade' event and echo messages until closed. */
function acceptWebSocket(req, socket, head) {
  const key = req.headers['sec-websocket-key'] || '';
  const upgrade = String(req.headers.upgrade || '').toLowerCase();
  if (req.method !== 'GET' || upgrade !== 'websocket' || Buffer.from(key, 'base64').length !== 16) {
    rejectUpgrade(socket, 400, 'Bad Request');
    return null;
  }
  if (req.headers['sec-websocket-version'] !== '13') {
    rejectUpgrade(socket, 426, 'Upgrade Required', 'Sec-WebSocket-Version: 13\r\n');
    return null;
  }
  const lines = [
    'HTTP/1.1 101 Switching Protocols',
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Accept: ${acceptKey(key)}`,
  ];
  // Browsers fail the connection when they asked for subprotocols and get none: pick the first offered.
  const protocol = String(req.headers['sec-websocket-protocol'] || '').split(',')[0].trim();
  if (protocol) lines.push(`Sec-WebSocket-Protocol: ${protocol}`);
  socket.write(lines.join('\r\n') + '\r\n\r\n');
  return new EchoConnection(socket, head);
}

function encodeFrame(opcode, payload = Buffer.alloc(0)) {
  const len = payload.length;
  const extra = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const header = Buffer.alloc(2 + extra);
  header[0] = 0x80 | opcode; // FIN + opcode; server frames are never masked
  if (extra === 0) header[1] = len;
  else if (extra === 2) { header[1] = 126; header.writeUInt16BE(len, 2); }
  else { header[1] = 127; header.writeBigUInt64BE(BigInt(len), 2); }
  return [header, payload];
}

class EchoConnection {
  constructor(socket, head) {
    this.socket = socket;
    this.chunks = [];
    this.buffered = 0;
    this.fragments = null; // {opcode, parts, size} while a fragmented message is being received
    this.closing = false;
    socket.setNoDelay(true);
    socket.on('data', (chunk) => this.receive(chunk));
    socket.on('drain', () => socket.resume());
    socket.on('error', () => socket.destroy());
    socket.on('end', () => socket.end()); // the client half-closed without a close frame
    if (head && head.length) this.receive(head);
  }

  send(opcode, payload) {
    if (this.socket.destroyed || !this.socket.writable) return;
    const [header, body] = encodeFrame(opcode, payload);
    this.socket.cork();
    this.socket.write(header);
    const ok = this.socket.write(body);
    this.socket.uncork();
    if (!ok) this.socket.pause(); // backpressure: stop reading until the client drains our echoes
  }

  /** Send a close frame and end; `code` undefined sends an empty close payload. */
  close(code, reason = '') {
    if (this.closing) return;
    this.closing = true;
    let payload = Buffer.alloc(0);
    if (code !== undefined) {
      payload = Buffer.alloc(2 + Buffer.byteLength(reason));
      payload.writeUInt16BE(code, 0);
      payload.write(reason, 2);
    }
    this.send(OP.CLOSE, payload);
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** The first n buffered bytes without consuming them (n is small: a frame header). */
  peek(n) {
    if (this.chunks[0].length >= n) return this.chunks[0];
    const parts = [];
    let size = 0;
    for (const chunk of this.chunks) {
      if (size >= n) break;
      parts.push(chunk);
      size += chunk.length;
    }
    return Buffer.concat(parts, size);
  }

  /** Remove and return the first n buffered bytes (concatenating only when they span chunks). */
  take(n) {
    const all = this.chunks[0].length >= n ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
    const rest = all.subarray(n);
    if (all === this.chunks[0]) {
      if (rest.length) this.chunks[0] = rest;
      else this.chunks.shift();
    } else {
      this.chunks = rest.length ? [rest] : [];
    }
    this.buffered -= n;
    return all.subarray(0, n);
  }

  receive(chunk) {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (!this.closing && this.buffered >= 2) {
      const first = this.peek(Math.min(14, this.buffered));
      const fin = (first[0] & 0x80) !== 0;
      const opcode = first[0] & 0x0f;
      const masked = (first[1] & 0x80) !== 0;
      let len = first[1] & 0x7f;
      let headerLen = 2;
      if (len === 126) { headerLen = 4; if (this.buffered < 4) return; len = first.readUInt16BE(2); }
      else if (len === 127) {
        headerLen = 10;
        if (this.buffered < 10) return;
        const big = first.readBigUInt64BE(2);
        if (big > BigInt(MAX_MESSAGE)) return this.close(1009, 'message too big');
        len = Number(big);
      }
      if ((first[0] & 0x70) !== 0) return this.close(1002, 'reserved bits set');
      if (!masked) return this.close(1002, 'client frames must be masked');
      if (this.buffered < headerLen + 4 + len) return; // wait for the whole frame
      const frame = this.take(headerLen + 4 + len);
      const mask = frame.subarray(headerLen, headerLen + 4);
      const payload = Buffer.from(frame.subarray(headerLen + 4));
      for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      this.handleFrame(fin, opcode, payload);
    }
  }

  handleFrame(fin, opcode, payload) {
    if (opcode >= 0x8) {
      if (!fin || payload.length > 125) return this.close(1002, 'bad control frame');
      if (opcode === OP.PING) return this.send(OP.PONG, payload);
      if (opcode === OP.PONG) return undefined;
      if (opcode === OP.CLOSE) {
        // Echo the peer's status code back (RFC 6455 §5.5.1), then close the TCP connection.
        return this.close(payload.length >= 2 ? payload.readUInt16BE(0) : undefined);
      }
      return this.close(1002, 'unknown opcode');
    }
    if (opcode === OP.CONT) {
      if (!this.fragments) return this.close(1002, 'unexpected continuation frame');
    } else if (opcode === OP.TEXT || opcode === OP.BINARY) {
      if (this.fragments) return this.close(1002, 'expected a continuation frame');
      this.fragments = { opcode, parts: [], size: 0 };
    } else {
      return this.close(1002, 'unknown opcode');
    }
    const message = this.fragments;
    message.parts.push(payload);
    message.size += payload.length;
    if (message.size > MAX_MESSAGE) return this.close(1009, 'message too big');
    if (!fin) return undefined;
    this.fragments = null;
    const data = Buffer.concat(message.parts, message.size);
    if (message.opcode === OP.TEXT && !isValidUtf8(data)) return this.close(1007, 'invalid UTF-8');
    return this.send(message.opcode, data);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
function isValidUtf8(buf) {
  try {
    utf8.decode(buf);
    return true;
  } catch {
    return false;
  }
}

module.exports = { acceptWebSocket, acceptKey, encodeFrame, EchoConnection, GUID };
