// A minimal gRPC-Web client: binary mode (application/grpc-web+proto),
// fetch for the request and a ReadableStream reader for the response, so
// server-streaming messages are handled as they arrive. Frames are a
// flag byte and a 4-byte big-endian length; flag 0x80 is the trailer
// frame ("name: value\r\n" lines). A trailers-only response carries
// grpc-status in the HTTP headers instead.
"use strict";

const GrpcWeb = (() => {
  function frame(msg) {
    const out = new Uint8Array(5 + msg.length);
    new DataView(out.buffer).setUint32(1, msg.length);
    out.set(msg, 5);
    return out;
  }

  function parseTrailers(bytes) {
    const tr = {};
    for (const line of new TextDecoder().decode(bytes).split("\r\n")) {
      const i = line.indexOf(":");
      if (i > 0) tr[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    return tr;
  }

  // call posts one request message to base+path and calls onMessage for
  // each response message; it resolves to {code, message}.
  async function call(base, path, requestBytes, onMessage) {
    const resp = await fetch(base + path, {
      method: "POST",
      headers: {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "x-user-agent": "meshd-example/1.0",
        "grpc-timeout": "10S",
      },
      body: frame(requestBytes),
    });
    if (resp.headers.get("grpc-status") !== null) { // trailers-only
      return { code: Number(resp.headers.get("grpc-status")), message: decodeURIComponent(resp.headers.get("grpc-message") || "") };
    }
    if (!resp.ok) return { code: 2, message: "HTTP " + resp.status };
    const reader = resp.body.getReader();
    let buf = new Uint8Array(0);
    let trailers = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const next = new Uint8Array(buf.length + value.length);
      next.set(buf);
      next.set(value, buf.length);
      buf = next;
      while (buf.length >= 5) {
        const len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
        if (buf.length < 5 + len) break;
        const flag = buf[0], body = buf.slice(5, 5 + len);
        buf = buf.slice(5 + len);
        if (flag & 0x80) trailers = parseTrailers(body);
        else onMessage(body);
      }
    }
    if (!trailers) return { code: 13, message: "response ended without trailers" };
    return { code: Number(trailers["grpc-status"]), message: decodeURIComponent(trailers["grpc-message"] || "") };
  }

  // Protobuf, just what the example's messages need: varints, and
  // length-delimited fields (bytes and sub-messages).
  function varint(n) {
    const out = [];
    while (n > 0x7f) { out.push((n & 0x7f) | 0x80); n >>>= 7; }
    out.push(n);
    return out;
  }
  function field(num, bytes) { // wire type 2
    return [...varint((num << 3) | 2), ...varint(bytes.length), ...bytes];
  }
  function int32Field(num, v) { return [...varint(num << 3), ...varint(v)]; }
  function fields(bytes) { // {fieldNumber: [values]}: varint numbers or Uint8Array
    const out = {};
    let i = 0;
    const readVarint = () => {
      let v = 0, shift = 0, b;
      do { b = bytes[i++]; v += (b & 0x7f) * 2 ** shift; shift += 7; } while (b & 0x80);
      return v;
    };
    while (i < bytes.length) {
      const key = readVarint(), num = Math.floor(key / 8), type = key & 7;
      let v;
      if (type === 0) v = readVarint();
      else if (type === 2) { const n = readVarint(); v = bytes.slice(i, i + n); i += n; }
      else if (type === 5) { v = bytes.slice(i, i + 4); i += 4; }
      else if (type === 1) { v = bytes.slice(i, i + 8); i += 8; }
      else throw new Error("wire type " + type);
      (out[num] = out[num] || []).push(v);
    }
    return out;
  }
  return { call, field, int32Field, fields };
})();
